"""Detection quality against ground truth: image AUROC (good vs defective folders), pixel
AUROC and PRO (heatmaps vs ground-truth masks), as in the MVTec AD benchmark."""
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


def _at_mask_size(heatmaps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(N,h,w) heatmaps bilinearly resized to the (N,H,W) masks' size."""
    if heatmaps.ndim != 3 or masks.ndim != 3 or len(heatmaps) != len(masks):
        raise ValueError(f"heatmaps {tuple(heatmaps.shape)} and masks {tuple(masks.shape)} must be "
                         "(N,h,w) and (N,H,W) with the same N")
    h = heatmaps.float()
    if h.shape[-2:] != masks.shape[-2:]:
        h = torch.nn.functional.interpolate(h[:, None], size=masks.shape[-2:], mode="bilinear",
                                            align_corners=False)[:, 0]
    return h


def pixel_auroc(heatmaps: torch.Tensor, masks: torch.Tensor) -> float:
    """AUROC over every pixel of every image; heatmaps are resized to the masks' size."""
    return auroc(_at_mask_size(heatmaps, masks).numpy(), masks.numpy())


# 8-connectivity: each pixel's neighbours right, below-left, below and below-right (the other four
# are covered by the same pairs seen from the other end).
_NEIGHBOURS = ((0, 1), (1, -1), (1, 0), (1, 1))


def label_regions(mask) -> tuple[np.ndarray, int]:
    """Connected components (8-connectivity) of a 2-D boolean mask: (labels, n) with int64 labels,
    0 for background and 1..n numbered in raster order of each region's first pixel (the
    numbering of scipy.ndimage.label). Union-find over the foreground pixels, vectorised: hook the
    larger root of every disagreeing neighbour pair onto the smaller, then compress the paths."""
    m = np.asarray(mask).astype(bool)
    if m.ndim != 2:
        raise ValueError(f"label_regions wants a 2-D mask, got shape {m.shape}")
    H, W = m.shape
    fg = np.flatnonzero(m)  # raster order, so a component's smallest index is its first pixel
    idx = np.full(m.shape, -1, dtype=np.int64)
    idx.flat[fg] = np.arange(fg.size)
    us, vs = [], []
    for dy, dx in _NEIGHBOURS:
        src = (slice(0, H - dy), slice(max(0, -dx), W - max(0, dx)))
        dst = (slice(dy, H), slice(max(0, dx), W + min(0, dx)))
        both = m[src] & m[dst]
        us.append(idx[src][both])
        vs.append(idx[dst][both])
    u, v = np.concatenate(us), np.concatenate(vs)
    parent = np.arange(fg.size)  # invariant: parent[i] <= i, so the forest has no cycles
    while True:
        ru, rv = parent[u], parent[v]
        differ = ru != rv
        if not differ.any():
            break
        u, v = u[differ], v[differ]  # a joined pair stays joined
        np.minimum.at(parent, np.maximum(ru[differ], rv[differ]), np.minimum(ru[differ], rv[differ]))
        while True:
            up = parent[parent]
            if np.array_equal(up, parent):
                break
            parent = up
    roots, comp = np.unique(parent, return_inverse=True)
    labels = np.zeros(m.shape, dtype=np.int64)
    labels.flat[fg] = comp.ravel() + 1
    return labels, len(roots)


def pro_auc(heatmaps: torch.Tensor, masks: torch.Tensor, max_fpr: float = 0.3) -> float:
    """Per-region overlap (PRO) of MVTec AD (Bergmann et al., 2021), normalised area under the
    PRO-vs-FPR curve for FPR in [0, max_fpr].

    A pixel is predicted anomalous at threshold t when its heatmap value is >= t. Each
    8-connected region of each ground-truth mask has overlap |predicted & region| / |region|;
    PRO(t) is the mean overlap over all regions of all images, FPR(t) the share of all
    ground-truth-negative pixels (good images included) predicted anomalous. Exact: every
    distinct heatmap value is a threshold (one sort, cumulative sums, each region pixel weighted
    1/(n_regions*|region|)); the curve is linear between thresholds and cut at max_fpr by linear
    interpolation; the area is divided by max_fpr, so a perfect map scores 1 and a random one
    about max_fpr/2. Heatmaps are resized to the masks' size as in `pixel_auroc`. NaN when the
    masks hold no region or no negative pixel."""
    if not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    h = _at_mask_size(heatmaps, masks).numpy().astype(np.float64).ravel()
    if np.isnan(h).any():
        raise ValueError("heatmaps contain NaN")
    m = masks.numpy().astype(bool)
    region = np.zeros(m.shape, dtype=np.int64)
    n_regions = 0
    for i in range(len(m)):
        if m[i].any():
            lab, n = label_regions(m[i])
            region[i] = np.where(lab > 0, lab + n_regions, 0)
            n_regions += n
    neg = ~m.ravel()
    n_neg = int(neg.sum())
    if n_regions == 0 or n_neg == 0:
        return float("nan")
    region = region.ravel()
    size = np.bincount(region, minlength=n_regions + 1)
    weight = np.zeros(len(h))
    inside = region > 0
    weight[inside] = 1.0 / (n_regions * size[region[inside]])
    order = np.argsort(-h, kind="stable")
    values = h[order]
    ends = np.r_[np.flatnonzero(np.diff(values)), len(values) - 1]  # last pixel of each tie
    fpr = np.r_[0.0, np.cumsum(neg[order])[ends] / n_neg]
    pro = np.r_[0.0, np.cumsum(weight[order])[ends]]
    cut = int(np.searchsorted(fpr, max_fpr, side="right"))  # first point past max_fpr
    if cut < len(fpr):
        x0, x1, y0, y1 = fpr[cut - 1], fpr[cut], pro[cut - 1], pro[cut]
        fpr = np.r_[fpr[:cut], max_fpr]
        pro = np.r_[pro[:cut], y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)]
    area = float(np.sum(np.diff(fpr) * (pro[1:] + pro[:-1]) / 2.0))
    return area / max_fpr


def false_positive_rate(scores, threshold: float) -> float:
    """Share of (good) scores above the threshold."""
    s = np.asarray(scores, dtype=np.float64)
    return float((s > threshold).mean()) if s.size else float("nan")
