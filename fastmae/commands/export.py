"""`fastmae export`: pretrained weights for timm, Hugging Face or the official code; a
fine-tuned classifier (finetune / linprobe checkpoint) for timm, Hugging Face, ONNX or torch.export."""
import argparse

HELP = ("export a pretraining checkpoint (timm encoder, HF ViTMAE, official MAE) or a fine-tuned "
        "classifier (timm, HF, ONNX, torch.export)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..downstream.export import FORMATS
    from ..downstream.export_classifier import ONNX_EXPORTERS
    from .flags import flag
    p.add_argument("checkpoint", help="fastmae checkpoint, official .pth, .safetensors or HF folder; or "
                                      "a finetune checkpoint-*.pth / linprobe probe-best.pth")
    flag(p, "format", required=True, choices=FORMATS,
         help="pretraining: timm | hf | official; classifier: timm | hf | onnx | pt2")
    flag(p, "out", required=True,
         help="pretraining - timm: FILE.safetensors; hf: a folder or FILE.safetensors; official: "
              "FILE.pth. classifier - timm: a folder (model.safetensors + config.json) or "
              "FILE.safetensors (+ FILE.json); hf: a folder; onnx: FILE.onnx; pt2: FILE.pt2")
    flag(p, "global-pool", default="token", choices=("token", "avg"),
         help="pretraining timm only: the pooling the encoder will be used with (avg renames norm "
              "to fc_norm); a classifier keeps the pooling it was trained with")
    flag(p, "onnx-exporter", default="auto", choices=ONNX_EXPORTERS,
         help="onnx only: dynamo (torch.export-based), torchscript (the tracer), or auto (default: "
              "dynamo, else the tracer, with the reason in the summary)")
    flag(p, "force", action="store_true", help="replace an existing --out")


def run(args) -> int:
    import json

    from ..downstream.export import export
    summary = export(args.checkpoint, args.format, args.out, force=args.force, global_pool=args.global_pool,
                     onnx_exporter=args.onnx_exporter)
    print(json.dumps({k: v for k, v in summary.items() if k != "model_config"}))
    return 0
