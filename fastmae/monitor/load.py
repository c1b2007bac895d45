"""Where a scoring or drift job gets its model and its reference statistics."""
from __future__ import annotations

from pathlib import Path

from ..settings import DataError
from .calibrate import threshold_at_fpr
from .images import load_folder
from .reference import Reference


def load_model(checkpoint, kernels: str = "auto"):
    """The MAE of any checkpoint format fastmae reads (never executes code from the file)."""
    from ..downstream.pretrained import load_mae
    return load_mae(checkpoint, kernels=kernels)


def reference_for(scorer, source, fpr: float | None = None):
    """Give `scorer` its reference: a reference .safetensors file, or a folder of good images
    (fit and calibrated now). Returns (Reference, skipped files of the folder)."""
    path = Path(source).expanduser()
    skipped = []
    if path.is_file():
        ref = Reference.load(path)
        if fpr is not None and fpr != ref.meta.get("fpr"):
            ref.threshold = threshold_at_fpr(ref.calib_scores, fpr)
            ref.meta["fpr"] = fpr
        scorer.set_reference(ref)
    elif path.is_dir():
        data = load_folder(path, scorer.model.img_size, scorer.model.in_chans, what="--reference")
        skipped = data.skipped
        ref = scorer.fit(data.images, 0.01 if fpr is None else fpr,
                         meta={"reference_source": str(path)})
    else:
        raise DataError(f"--reference {path} is neither a folder of good images nor a reference file")
    return ref, skipped
