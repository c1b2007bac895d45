"""`fastmae finetune`: fine-tune a pretrained MAE encoder as a classifier (the official
main_finetune.py recipe), optionally on a few labels per class, or train the same ViT
from scratch as a baseline."""
import argparse

HELP = "fine-tune a pretrained MAE as a ViT classifier (few labels, or all)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .flags import add_data_flags, add_runtime_flags, flag
    flag(p, "checkpoint", "finetune", default=None,
         help="pretrained MAE: fastmae checkpoint, official .pth, .safetensors, or a Hugging Face "
              "ViTMAE folder / hub id")
    flag(p, "model", default=None, help="architecture by name, for --from-scratch without --checkpoint")
    flag(p, "from-scratch", action="store_true",
         help="random init (the baseline): same architecture, no pretrained weights")
    add_data_flags(p)
    pool = p.add_mutually_exclusive_group()
    flag(pool, "global-pool", dest="global_pool", action="store_true", default=True,
         help="mean of patch tokens + fc_norm (default, as the paper)")
    flag(pool, "cls-token", dest="global_pool", action="store_false", help="classify the cls token")
    flag(p, "epochs", type=int, default=50)
    flag(p, "batch-size", type=int, default=64)
    flag(p, "accum-iter", type=int, default=1)
    flag(p, "blr", type=float, default=5e-4, help="base lr: lr = blr * effective batch / 256")
    flag(p, "lr", type=float, default=None, help="absolute lr (overrides --blr)")
    flag(p, "min-lr", type=float, default=1e-6)
    flag(p, "warmup-epochs", type=float, default=5)
    flag(p, "weight-decay", type=float, default=0.05)
    flag(p, "layer-decay", type=float, default=None,
         help="layer-wise lr decay (default 0.65 for ViT-B and smaller, 0.75 for L/H)")
    flag(p, "drop-path", type=float, default=0.1)
    flag(p, "smoothing", type=float, default=0.1, help="label smoothing")
    flag(p, "mixup", type=float, default=0.0, help="mixup alpha (the paper: 0.8)")
    flag(p, "cutmix", type=float, default=0.0, help="cutmix alpha (the paper: 1.0)")
    flag(p, "mixup-prob", type=float, default=1.0)
    flag(p, "mixup-switch-prob", type=float, default=0.5)
    flag(p, "clip-grad", type=float, default=None)
    flag(p, "eval-every", type=int, default=1, help="epochs between evaluations")
    flag(p, "output-dir", default="./output_finetune")
    flag(p, "resume", default=None, help="checkpoint-last.pth of an earlier run to continue")
    add_runtime_flags(p)


def run(args) -> int:
    import json

    from ..downstream.finetune import FinetuneConfig, finetune
    fields = {f for f in FinetuneConfig.__dataclass_fields__}
    cfg = FinetuneConfig(**{k: v for k, v in vars(args).items() if k in fields})
    r = finetune(cfg)
    print(json.dumps({"best_acc1": round(r.best_acc1, 2), "best_acc5": round(r.best_acc5, 2),
                      "best_epoch": r.best_epoch, "final_acc1": round(r.final_acc1, 2),
                      "train_images": r.train_images, "val_images": r.val_images,
                      "checkpoint": str(r.checkpoint), "metrics": str(r.output_dir / "metrics.json"),
                      "confusion_matrix": str(r.output_dir / "confusion_matrix.png")}))
    return 0
