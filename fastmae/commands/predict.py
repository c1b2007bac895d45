"""`fastmae predict`: top-k classes of new images with a fine-tuned classifier (or its ONNX export)."""
import argparse

HELP = "classify images with a finetune / linprobe checkpoint (or its ONNX export): top-k CSV"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .flags import ATTN_HELP, DEVICE_HELP, PRECISION_HELP, flag
    flag(p, "checkpoint", default=None,
         help="checkpoint-best.pth of `fastmae finetune` or probe-best.pth of `fastmae linprobe`")
    flag(p, "onnx", default=None, help="run this `fastmae export --format onnx` file with onnxruntime "
                                       "instead (preprocessing and classes from its metadata)")
    flag(p, "data", required=True, help="folder of images (recursive) or a file list")
    flag(p, "out", required=True, help="FILE.csv: path, [label], top1, prob1, ... per image")
    flag(p, "topk", type=int, default=5, help="classes per image (default 5)")
    flag(p, "batch-size", type=int, default=64)
    flag(p, "num-workers", type=int, default=0, help="decoding processes (default 0: in this process)")
    flag(p, "device", default="auto", help=DEVICE_HELP)
    flag(p, "precision", default=None, help=PRECISION_HELP)
    flag(p, "attn", default="auto", help=ATTN_HELP)
    flag(p, "force", action="store_true", help="replace an existing --out")


def run(args) -> int:
    import json
    import sys

    import warnings

    from ..downstream.predict import predict
    with warnings.catch_warnings(record=True) as caught:  # skipped files: one plain line, no source echo
        warnings.simplefilter("always")
        s = predict(args.data, args.out, checkpoint=args.checkpoint, onnx=args.onnx, topk=args.topk,
                    batch_size=args.batch_size, num_workers=args.num_workers, device=args.device,
                    precision=args.precision, attn=args.attn, force=args.force)
    for w in caught:
        print(w.message, file=sys.stderr)
    acc = f", top-1 {s['acc1']:.2f}% against the folder's labels" if "acc1" in s else ""
    print(f"predict: {s['images']} images in {s['seconds']:.2f} s ({s['images_per_s']:.1f} images/s, "
          f"{s['runner']}), {s['skipped']} skipped{acc} -> {s['out']}", file=sys.stderr)
    print(json.dumps({k: v for k, v in s.items() if k != "skipped_files"}))
    return 0
