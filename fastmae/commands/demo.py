"""`fastmae demo`: pretrain without labels, fine-tune with a few, compare with training
from scratch, and write a report - on the built-in dataset, on a CPU. `fastmae demo --monitor`:
pretrain on good parts, score defects, test for drift - on the built-in inspection dataset."""
import argparse

HELP = ("the whole story on the built-in dataset: MAE pretraining vs scratch with few labels "
        "(--monitor: anomaly detection and drift)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .flags import DEVICE_HELP, KERNELS_HELP, flag
    flag(p, "monitor", action="store_true",
         help="the monitoring story instead: pretrain on good parts of the synthetic inspection dataset, "
              "score defects (AUROC, heatmaps), test for drift")
    flag(p, "output-dir", default=None, help="where the report, pictures and checkpoints go "
                                             "(default ./fastmae-demo, with --monitor ./fastmae-monitor-demo)")
    flag(p, "quick", action="store_true", help="half the fine-tuning epochs (about 8 CPU minutes instead of 11); "
                                                 "with --monitor, 50 pretraining epochs instead of 150")
    flag(p, "labels-per-class", type=int, default=None, help="labelled images per class (default 50, of ~200)")
    flag(p, "pretrain-epochs", type=int, default=None)
    flag(p, "finetune-epochs", type=int, default=None)
    flag(p, "mask-ratio", type=float, default=None)
    flag(p, "seed", type=int, default=0)
    flag(p, "device", default="auto", help=DEVICE_HELP)
    flag(p, "loader", default=None,
         help="torch (default: the measured CPU path; with --monitor: auto) | dali | auto")
    flag(p, "kernels", default="auto", help=KERNELS_HELP)
    flag(p, "force", action="store_true", help="write into a non-empty --output-dir")
    flag(p, "curve", action="store_true",
         help="also run the quick label curve (fastmae label-curve --quick) and show it in the report")


def run(args) -> int:
    from pathlib import Path

    from ..downstream.demo import DemoConfig, quick_config, run_demo
    from ..settings import ConfigError
    if args.monitor:
        for name, given in (("--labels-per-class", args.labels_per_class is not None),
                            ("--finetune-epochs", args.finetune_epochs is not None), ("--curve", args.curve)):
            if given:
                raise ConfigError(f"{name} belongs to the classification demo; it does not apply to --monitor")
    out = Path(args.output_dir or ("./fastmae-monitor-demo" if args.monitor else "./fastmae-demo")).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.force:
        raise ConfigError(f"--output-dir {out} is not empty; choose a new folder or pass --force")
    if args.monitor:
        from ..monitor.demo import run_monitor_demo
        overrides = {k: v for k, v in (("epochs", args.pretrain_epochs), ("mask_ratio", args.mask_ratio))
                     if v is not None}
        run_monitor_demo(out, quick=args.quick, seed=args.seed, device=args.device,
                         loader=args.loader or "auto", kernels=args.kernels, **overrides)
        return 0
    kw = dict(output_dir=str(out), seed=args.seed, device=args.device, loader=args.loader or "torch",
              kernels=args.kernels, curve=args.curve)
    for name in ("labels_per_class", "pretrain_epochs", "finetune_epochs", "mask_ratio"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    cfg = quick_config(**kw) if args.quick else DemoConfig(**kw)
    run_demo(cfg)
    return 0
