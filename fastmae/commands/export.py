"""`fastmae export`: pretrained weights for timm, Hugging Face or the official code."""
import argparse

HELP = "export a checkpoint for timm (encoder .safetensors), Hugging Face ViTMAE, or official MAE"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..downstream.flags import flag
    p.add_argument("checkpoint", help="fastmae checkpoint, official .pth, .safetensors or HF folder")
    flag(p, "format", required=True, choices=("timm", "hf", "official"))
    flag(p, "out", required=True, help="timm: FILE.safetensors; hf: a folder (save_pretrained) or "
                                       "FILE.safetensors; official: FILE.pth")
    flag(p, "global-pool", default="token", choices=("token", "avg"),
         help="timm only: the pooling the encoder will be used with (avg renames norm to fc_norm)")
    flag(p, "force", action="store_true", help="replace an existing --out")


def run(args) -> int:
    import json

    from ..downstream.export import export
    summary = export(args.checkpoint, args.format, args.out, force=args.force, global_pool=args.global_pool)
    print(json.dumps({k: v for k, v in summary.items() if k != "model_config"}))
    return 0
