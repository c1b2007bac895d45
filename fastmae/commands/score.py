"""`fastmae score`: per-image anomaly scores and heatmaps against a reference of good images."""
import argparse

HELP = "anomaly scores, heatmaps and an HTML report of new images against good reference images"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .flags import add_inference_flags, flag
    flag(p, "checkpoint", required=True, help="pretrained MAE (any format fastmae reads)")
    flag(p, "reference", required=True,
         help="folder of good images (fit + calibrated now) or a reference .safetensors file")
    flag(p, "data", required=True, help="folder of images to score (good/<defect> sub-folders and "
                                        "a sibling ground_truth/ give AUROCs)")
    flag(p, "out", "output-dir", required=True,
         help="report folder: scores.csv, scores.json, heatmaps/, report.html")
    flag(p, "save-reference", default=None, help="write the reference statistics to FILE.safetensors")
    flag(p, "fpr", type=float, default=None,
         help="false-positive rate the threshold is calibrated at (default 0.01, or the reference file's)")
    flag(p, "rounds", type=int, default=2, help="complementary-mask rounds averaged (default 2)")
    flag(p, "mask-ratio", type=float, default=0.75, help="mask ratio of the passes (default 0.75: 4 passes)")
    flag(p, "components", default=None,
         help="comma-separated score components (default recon,patch_novelty,novelty)")
    flag(p, "feature-layer", type=int, default=None,
         help="patch features from the residual stream after this many encoder blocks "
              "(default: the final tokens)")
    flag(p, "feature-center", default="image",
         help="patch features measured against the image's mean (image, default), their "
              "neighbours' mean (local: a patch counts by how it differs from its surroundings) or nothing (none)")
    flag(p, "sigma", type=float, default=None,
         help="Gaussian smoothing of the heatmaps in pixels (default: half a patch)")
    flag(p, "recon-smooth", type=float, default=0.0, metavar="SIGMA",
         help="compare reconstruction and image after a Gaussian blur of SIGMA pixels: colour and "
              "shape errors, not fine texture the model cannot predict (default 0: raw error)")
    flag(p, "bank-size", type=int, default=50000,
         help="patch features kept in the reference's nearest-neighbour bank (default 50000)")
    flag(p, "top", type=int, default=16,
         help="heatmap pictures of the N most anomalous images (plus flagged)")
    add_inference_flags(p)


def run(args) -> int:
    from ..monitor.scoring import score_folder
    comps = None if args.components is None else \
        [c.strip() for c in args.components.split(",") if c.strip()]
    score_folder(args.checkpoint, args.reference, args.data, args.out, save_reference=args.save_reference,
                 fpr=args.fpr, rounds=args.rounds, mask_ratio=args.mask_ratio, seed=args.seed,
                 device=args.device, precision=args.precision, batch_size=args.batch_size, kernels=args.kernels,
                 compile=args.compile, top=args.top,
                 components=comps,
                 feature_layer=args.feature_layer, bank_size=args.bank_size, recon_smooth=args.recon_smooth,
                 feature_center=args.feature_center, sigma=args.sigma)
    return 0
