"""`fastmae linprobe`: linear probing of a frozen pretrained encoder (the paper's protocol)."""
import argparse

HELP = "linear probe: train a BatchNorm + Linear head on frozen MAE features"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .flags import add_data_flags, add_runtime_flags, flag
    flag(p, "checkpoint", "finetune", required=True, help="pretrained MAE (any format fastmae reads)")
    add_data_flags(p)
    pool = p.add_mutually_exclusive_group()
    flag(pool, "cls-token", dest="pool", action="store_const", const="cls", default="cls",
         help="probe the cls token (default, as the paper)")
    flag(pool, "global-pool", dest="pool", action="store_const", const="avg",
         help="probe the mean of the patch tokens")
    flag(p, "epochs", type=int, default=90)
    flag(p, "batch-size", type=int, default=512)
    flag(p, "blr", type=float, default=0.1, help="base lr: lr = blr * batch / 256")
    flag(p, "lr", type=float, default=None)
    flag(p, "min-lr", type=float, default=0.0)
    flag(p, "warmup-epochs", type=float, default=10)
    flag(p, "weight-decay", type=float, default=0.0)
    flag(p, "optimizer", default="lars", help="lars (default, as the paper) | sgd | adamw")
    flag(p, "cache-features", action="store_true",
         help="compute training features once (no augmentation): much faster")
    flag(p, "output-dir", default="./output_linprobe")
    add_runtime_flags(p)


def run(args) -> int:
    import json

    from ..downstream.linprobe import LinprobeConfig, linprobe
    fields = set(LinprobeConfig.__dataclass_fields__)
    r = linprobe(LinprobeConfig(**{k: v for k, v in vars(args).items() if k in fields}))
    print(json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()
                      if k in ("best_acc1", "best_acc5", "best_epoch", "final_acc1", "pool",
                               "train_images", "val_images")}))
    return 0
