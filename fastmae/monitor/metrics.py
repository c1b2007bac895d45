"""Detection quality against ground truth: image AUROC (good vs defective folders) and pixel
AUROC (heatmaps vs ground-truth masks), as in the MVTec AD benchmark."""
from __future__ import annotations

import numpy as np
import torch


def auroc(scores, labels) -> float:
    """Area under the ROC curve of scores for binary labels (1 = anomalous), with ties
    counted half (the Mann-Whitney U statistic). NaN when one class is absent."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).astype(bool).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # Average rank of each run of equal scores.
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], len(s)]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def pixel_auroc(heatmaps: torch.Tensor, masks: torch.Tensor) -> float:
    """AUROC over every pixel of every image; heatmaps are resized to the masks' size."""
    h = heatmaps.float()
    if h.shape[-2:] != masks.shape[-2:]:
        h = torch.nn.functional.interpolate(h[:, None], size=masks.shape[-2:], mode="bilinear",
                                            align_corners=False)[:, 0]
    return auroc(h.numpy(), masks.numpy())


def false_positive_rate(scores, threshold: float) -> float:
    """Share of (good) scores above the threshold."""
    s = np.asarray(scores, dtype=np.float64)
    return float((s > threshold).mean()) if s.size else float("nan")
