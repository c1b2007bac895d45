"""`fastmae label-curve`: accuracy against labels per class, pretrained vs from scratch,
and how many labels pretraining saves. Resumable: run the same command again to continue."""
import argparse

HELP = "how many labels do I need: accuracy vs labels per class, pretrained vs scratch"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .flags import add_runtime_flags, flag
    flag(p, "checkpoint", required=True, help="pretrained MAE (any format fastmae reads)")
    flag(p, "data", "data-path", default=None,
         help="labelled images: a folder with train/ and val/, an ImageFolder or a labelled file "
              "list; default: the built-in dataset")
    flag(p, "val", default=None, help="held-out labelled images (default: DATA/val, else a fixed "
                                      "stratified share of --data)")
    flag(p, "holdout-fraction", type=float, default=0.2)
    flag(p, "labels-per-class", default=None, metavar="LIST",
         help="label budgets, e.g. 1,2,5,10,25,50,all (default; --quick: 2,10,50,all)")
    flag(p, "seeds", type=int, default=None, help="seeds per budget (default 3; --quick: 1)")
    flag(p, "protocol", default="finetune", choices=("finetune", "linprobe", "knn"),
         help="finetune (default): fine-tune vs train from scratch; linprobe / knn: frozen "
              "pretrained vs frozen random-init features (fast)")
    flag(p, "out", "output-dir", default="./label-curve", help="folder of the curve (default ./label-curve)")
    flag(p, "workers", type=int, default=1, help="runs in parallel processes (default 1)")
    flag(p, "quick", action="store_true",
         help="a small built-in configuration (the demo's recipe, 4 budgets, 1 seed, 60-200 steps a run)")
    flag(p, "epochs", type=int, default=None, help="epochs per run (default 50; see --min/max-steps)")
    flag(p, "min-steps", type=int, default=None, help="stretch small budgets to at least this many steps")
    flag(p, "max-steps", type=int, default=None, help="cut large budgets to at most this many steps")
    flag(p, "batch-size", type=int, default=None)
    flag(p, "blr", type=float, default=None)
    flag(p, "layer-decay", type=float, default=None)
    flag(p, "keep-checkpoints", action="store_true", help="keep each run's .pth files (large)")
    add_runtime_flags(p)
    p.set_defaults(seed=None)


def run(args) -> int:
    from ..downstream.label_curve import QUICK, CurveConfig, label_curve, parse_budgets
    from ..settings import ConfigError

    if args.seed is not None:
        raise ConfigError("label-curve runs seeds 0..N-1: use --seeds N instead of --seed")
    kw = dict(QUICK) if args.quick else {}
    if args.labels_per_class is not None:
        kw["budgets"] = parse_budgets(args.labels_per_class)
    for name in ("seeds", "epochs", "min_steps", "max_steps", "batch_size", "blr", "layer_decay"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    if args.loader != "auto" or "loader" not in kw:
        kw["loader"] = args.loader
    cfg = CurveConfig(checkpoint=args.checkpoint, data=args.data, val=args.val,
                      holdout_fraction=args.holdout_fraction, protocol=args.protocol,
                      output_dir=args.out, workers=args.workers, num_workers=args.num_workers,
                      device=args.device, precision=args.precision, attn=args.attn,
                      keep_checkpoints=args.keep_checkpoints, **kw)
    r = label_curve(cfg)
    print(f"{r['headline']}")
    print(f"wrote {cfg.output_dir}/curve.json, curve.md and curve.png"
          + ("" if r["complete"] else " (incomplete)"))
    return 0
