"""`fastmae embed`: one feature vector per image, with the file names."""
import argparse

HELP = "write frozen MAE features of a folder of images (.safetensors or .npy)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .flags import DEVICE_HELP, PRECISION_HELP, flag
    p.add_argument("path", help="folder of images (recursive) or a file list")
    flag(p, "checkpoint", required=True, help="pretrained MAE (any format fastmae reads)")
    flag(p, "out", required=True, help="FILE.safetensors (names in metadata) or FILE.npy (+ FILE.txt)")
    flag(p, "pool", default="cls", choices=("cls", "avg"), help="cls token (default) or patch mean")
    flag(p, "img-size", "input-size", type=int, default=None)
    flag(p, "batch-size", type=int, default=64)
    flag(p, "num-workers", type=int, default=0)
    flag(p, "device", default="auto", help=DEVICE_HELP)
    flag(p, "precision", default=None, help=PRECISION_HELP)
    flag(p, "force", action="store_true", help="replace an existing --out")


def run(args) -> int:
    import json

    from ..downstream.embed import embed
    summary = embed(args.path, args.checkpoint, args.out, pool=args.pool, img_size=args.img_size,
                    batch_size=args.batch_size, num_workers=args.num_workers, device=args.device,
                    precision=args.precision, force=args.force)
    print(json.dumps(summary))
    return 0
