"""`fastmae visualize`: the paper's reconstruction figure for your own images."""
import argparse

HELP = "picture of MAE reconstructions: original | masked | reconstruction | + visible"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .flags import DEVICE_HELP, flag
    p.add_argument("checkpoint", help="pretrained MAE (any format fastmae reads)")
    p.add_argument("images", nargs="+", help="image files or folders")
    flag(p, "mask-ratio", type=float, default=0.75)
    flag(p, "seed", type=int, default=0, help="seed of the random mask")
    flag(p, "out", default="reconstructions.png", help="PNG file to write")
    flag(p, "limit", type=int, default=8, help="at most this many images (rows)")
    flag(p, "force", action="store_true", help="replace an existing --out")
    flag(p, "device", default="auto", help=DEVICE_HELP)


def run(args) -> int:
    from pathlib import Path

    from .. import data
    from ..data.transforms import mean_std
    from ..files import check_new
    from ..settings import resolve_device
    from ..downstream.images import load_batch
    from ..downstream.pretrained import load_mae
    from ..settings import ConfigError
    from ..pictures import require_matplotlib, save_reconstructions

    require_matplotlib("fastmae visualize")
    if not 0.0 <= args.mask_ratio < 1.0:
        raise ConfigError(f"--mask-ratio must be in [0, 1), got {args.mask_ratio}")
    if args.limit < 1:
        raise ConfigError("--limit must be at least 1")
    if Path(args.out).suffix.lower() != ".png":
        raise ConfigError(f"--out must be a .png file, got {args.out}")
    out = check_new(args.out, args.force)
    paths = []
    for item in args.images:
        p = Path(item)
        paths += [p] if p.is_file() else data.scan(p).paths
    paths = paths[:args.limit]
    model = load_mae(args.checkpoint, kernels="auto").to(resolve_device(args.device))
    if model.img_size[0] != model.img_size[1]:
        raise ConfigError("visualize makes square crops; this model has a non-square img_size")
    imgs = load_batch(paths, model.img_size[0], model.in_chans)
    mean, std = mean_std(model.in_chans)
    save_reconstructions(model, imgs, out, mask_ratio=args.mask_ratio, seed=args.seed, mean=mean, std=std)
    print(f"wrote {out} ({len(paths)} images, mask ratio {args.mask_ratio})")
    return 0
