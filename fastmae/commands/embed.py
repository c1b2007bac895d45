"""`fastmae embed`: one feature vector per image, with the file names."""
import argparse

HELP = "write frozen MAE features of a folder of images (.safetensors or .npy)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..downstream.flags import flag
    p.add_argument("path", help="folder of images (recursive) or a file list")
    flag(p, "checkpoint", required=True, help="pretrained MAE (any format fastmae reads)")
    flag(p, "out", required=True, help="FILE.safetensors (names in metadata) or FILE.npy (+ FILE.txt)")
    flag(p, "pool", default="cls", choices=("cls", "avg"), help="cls token (default) or patch mean")
    flag(p, "img-size", "input-size", type=int, default=None)
    flag(p, "batch-size", type=int, default=64)
    flag(p, "num-workers", type=int, default=0)
    flag(p, "device", default="auto", help="auto | cuda | cpu")
    flag(p, "precision", default=None, help="bf16 | fp32 (default: bf16 on CUDA, fp32 on CPU)")
    flag(p, "force", action="store_true", help="replace an existing --out")


def run(args) -> int:
    import json

    from ..downstream.embed import embed
    from ..settings import resolve_device
    from ..downstream.finetune import resolve_precision
    device = resolve_device(args.device)
    summary = embed(args.path, args.checkpoint, args.out, pool=args.pool, img_size=args.img_size,
                    batch_size=args.batch_size, num_workers=args.num_workers, device=device,
                    amp_dtype=resolve_precision(args.precision, device), force=args.force)
    print(json.dumps(summary))
    return 0
