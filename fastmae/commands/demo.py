"""`fastmae demo`: pretrain without labels, fine-tune with a few, compare with training
from scratch, and write a report - on the built-in dataset, on a CPU."""
import argparse

HELP = "the whole story on the built-in dataset: MAE pretraining vs scratch with few labels"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .flags import DEVICE_HELP, KERNELS_HELP, flag
    flag(p, "output-dir", default="./fastmae-demo", help="where the report, pictures and checkpoints go")
    flag(p, "quick", action="store_true", help="half the fine-tuning epochs (about 8 CPU minutes instead of 11)")
    flag(p, "labels-per-class", type=int, default=None, help="labelled images per class (default 50, of ~200)")
    flag(p, "pretrain-epochs", type=int, default=None)
    flag(p, "finetune-epochs", type=int, default=None)
    flag(p, "mask-ratio", type=float, default=None)
    flag(p, "seed", type=int, default=0)
    flag(p, "device", default="auto", help=DEVICE_HELP)
    flag(p, "loader", default="torch",
         help="torch (default: the measured CPU path) | dali | auto")
    flag(p, "kernels", default="auto", help=KERNELS_HELP)
    flag(p, "force", action="store_true", help="write into a non-empty --output-dir")
    flag(p, "curve", action="store_true",
         help="also run the quick label curve (fastmae label-curve --quick) and show it in the report")


def run(args) -> int:
    from pathlib import Path

    from ..downstream.demo import DemoConfig, quick_config, run_demo
    from ..settings import ConfigError
    out = Path(args.output_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.force:
        raise ConfigError(f"--output-dir {out} is not empty; choose a new folder or pass --force")
    kw = dict(output_dir=str(out), seed=args.seed, device=args.device, loader=args.loader,
              kernels=args.kernels, curve=args.curve)
    for name in ("labels_per_class", "pretrain_epochs", "finetune_epochs", "mask_ratio"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    cfg = quick_config(**kw) if args.quick else DemoConfig(**kw)
    run_demo(cfg)
    return 0
