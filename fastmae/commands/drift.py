"""`fastmae drift`: has the incoming data changed? Exit 0 no drift, 1 drift, 2 user error."""
import argparse

HELP = "test new images against the reference for drift (exit 0 none, 1 drift, 2 error)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .flags import add_inference_flags, flag
    flag(p, "checkpoint", required=True, help="pretrained MAE (any format fastmae reads)")
    flag(p, "reference", required=True, help="folder of reference images or a reference .safetensors file")
    flag(p, "data", required=True, help="folder of new images")
    flag(p, "json", default=None, help="write the statistics to this JSON file")
    flag(p, "report", default=None, help="write an HTML report (embedding PCA, novelty histograms)")
    flag(p, "alpha", type=float, default=0.01, help="drift when the MMD p-value is below this (default 0.01)")
    flag(p, "permutations", type=int, default=1000, help="permutations of the MMD test (default 1000)")
    add_inference_flags(p)


def run(args) -> int:
    from ..monitor.drifting import drift_folder
    from ..settings import ConfigError
    if args.permutations < 99:
        raise ConfigError("--permutations must be at least 99")
    result = drift_folder(args.checkpoint, args.reference, args.data, json_out=args.json,
                          report=args.report, alpha=args.alpha, permutations=args.permutations,
                          seed=args.seed, device=args.device, precision=args.precision,
                          batch_size=args.batch_size, kernels=args.kernels, compile=args.compile)
    return 1 if result["drift"] else 0
