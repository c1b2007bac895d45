"""`fastmae knn`: weighted k-nearest-neighbour accuracy of frozen features (as DINO)."""
import argparse

HELP = "k-NN accuracy of frozen MAE features (cosine similarity, weighted votes)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .flags import add_data_flags, add_runtime_flags, flag
    flag(p, "checkpoint", required=True, help="pretrained MAE (any format fastmae reads)")
    add_data_flags(p)
    flag(p, "k", "nb-knn", type=int, default=20, help="neighbours (default 20)")
    flag(p, "temperature", type=float, default=0.07, help="vote weight exp(sim / T) (default 0.07)")
    flag(p, "pool", default="cls", choices=("cls", "avg"), help="cls token (default) or patch mean")
    flag(p, "batch-size", type=int, default=256)
    flag(p, "out", default=None, help="write the metrics here as JSON")
    flag(p, "force", action="store_true", help="replace an existing --out")
    add_runtime_flags(p)


def run(args) -> int:
    import json

    from ..files import atomic_write_json, check_new
    from ..downstream.knn import knn_run
    if args.out:
        check_new(args.out, args.force)
    metrics, cm, classes = knn_run(args.checkpoint, data=args.data, val=args.val,
                                   holdout_fraction=args.holdout_fraction,
                                   labels_per_class=args.labels_per_class,
                                   label_fraction=args.label_fraction, k=args.k,
                                   temperature=args.temperature, pool=args.pool, img_size=args.img_size,
                                   batch_size=args.batch_size, loader=args.loader,
                                   num_workers=args.num_workers, device=args.device,
                                   precision=args.precision, attn=args.attn, seed=args.seed)
    if args.out:
        atomic_write_json({**metrics, "classes": classes, "confusion_matrix": cm.tolist()}, args.out)
    print(json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in metrics.items()}))
    return 0
