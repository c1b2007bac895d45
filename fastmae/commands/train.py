"""`fastmae train`: MAE pretraining. Flag names follow the official main_pretrain.py
(underscore spellings accepted too); values resolve as preset < --config YAML < flags."""
import argparse
import functools
import sys

from ..settings import COMPILE, COMPILE_MODES, ConfigError
from .flags import ATTN_HELP, DEVICE_HELP, KERNELS_HELP, LOADER_HELP, PRECISION_HELP, flag, one_of

HELP = "pretrain an MAE (no arguments: the built-in dataset, a few minutes on a CPU)"

# An unset flag stays out of the namespace, so the preset and --config fill it.
_flag = functools.partial(flag, default=argparse.SUPPRESS)


def add_arguments(p: argparse.ArgumentParser) -> None:
    _flag(p, "config", metavar="FILE", help="YAML file of settings (flag names as keys)")
    _flag(p, "data", help="folder of images (recursive) or a file list; default: built-in dataset")
    _flag(p, "model", help="mae_vit_{micro_patch4,tiny,small,base,large}_patch16, mae_vit_huge_patch14")
    _flag(p, "epochs", type=int)
    _flag(p, "batch-size", type=int, help="per GPU/process")
    _flag(p, "accum-iter", type=int, help="gradient accumulation steps")
    _flag(p, "blr", type=float, help="base lr: lr = blr * effective batch / 256")
    _flag(p, "lr", type=float, help="absolute lr (overrides --blr)")
    _flag(p, "min-lr", type=float)
    _flag(p, "warmup-epochs", type=float,
          help="linear lr warm-up (default: the preset's, 2 or 40, at most 10%% of --epochs)")
    _flag(p, "weight-decay", type=float)
    _flag(p, "mask-ratio", type=float)
    _flag(p, "min-crop-scale", type=float,
          help="smallest crop, as a share of the image (default 0.2, MAE's); near 1 when the camera is fixed")
    _flag(p, "norm-pix-loss", action="store_true", help="per-patch normalised pixel targets")
    _flag(p, "img-size", type=int)
    _flag(p, "in-chans", type=int, help="3 (RGB) or 1 (grayscale)")
    _flag(p, "loader", help=LOADER_HELP)
    _flag(p, "kernels", help=KERNELS_HELP)
    _flag(p, "attn", help=ATTN_HELP)
    _flag(p, "compile", nargs="?", const="on", metavar="WHEN",
          help=f"torch.compile: {one_of(COMPILE)} (auto, the default: on for CUDA, off on the CPU; "
               "bare --compile: on)")
    _flag(p, "compile-mode", help=f"{one_of(COMPILE_MODES)}: compile the whole model (default) or each block")
    _flag(p, "cuda-graphs", action="store_true",
          help="capture the whole step (forward, backward, AdamW) in one CUDA graph")
    _flag(p, "precision", help=PRECISION_HELP)
    _flag(p, "num-workers", type=int)
    _flag(p, "output-dir", help="where checkpoints, metrics and pictures go (default ./output_dir)")
    _flag(p, "resume", help="auto (default: continue the run in --output-dir if any) | PATH | none")
    _flag(p, "save-every", type=int, help="epochs between checkpoints")
    _flag(p, "save-every-steps", type=int, help="optimizer steps between extra checkpoints")
    _flag(p, "keep-last", type=int, help="numbered checkpoints kept")
    _flag(p, "picture-every", type=int, help="epochs between reconstruction pictures")
    _flag(p, "clip-grad", type=float)
    _flag(p, "max-bad-steps", type=int, help="non-finite losses in a row before the run stops")
    _flag(p, "max-steps", type=int, help="stop after this many optimizer steps")
    _flag(p, "log-every", type=int)
    _flag(p, "seed", type=int)
    _flag(p, "device", help=DEVICE_HELP)


def config_from_args(args: argparse.Namespace):
    from ..train.config import TrainConfig, from_yaml
    values = from_yaml(args.config) if "config" in args else {}
    values.update({k: v for k, v in vars(args).items()
                   if not k.startswith("_") and k not in ("command", "config")})
    try:
        return TrainConfig(**values)
    except TypeError as e:
        raise ConfigError(str(e)) from None


def run(args) -> int:
    from ..train import pretrain
    cfg = config_from_args(args)
    result = pretrain(cfg, log=lambda msg: print(msg, file=sys.stderr if msg.startswith("warning") else sys.stdout))
    return 0 if not result.interrupted else 130


