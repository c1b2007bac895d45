"""Calibration on held-out reference images: each component score is put on a common scale
(its robust z-score over the held-out images), the components are averaged into one score,
and the alarm threshold is that score's (1 - fpr) quantile over the held-out images, read
from a fit of their upper tail where too few of them lie above it (threshold_at_fpr)."""
from __future__ import annotations

import math

import torch

from ..settings import DataError

MIN_REFERENCE = 20  # below this a threshold is guesswork


def check_reference_count(n: int) -> None:
    if n < MIN_REFERENCE:
        raise DataError(f"the reference set has {n} readable image(s); calibration needs at least "
                        f"{MIN_REFERENCE} good images ({MIN_REFERENCE - n} more), and about 1/fpr "
                        "held-out ones for an accurate threshold")


def robust_scale(x: torch.Tensor, dim: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(median, scale) with scale = IQR / 1.349 (the std of a normal), floored so that a
    constant component cannot divide by zero. A 1-D input of more than 2**22 values (every
    pixel of a large reference) is measured on an even stride of them."""
    x = x.float()
    if x.dim() == 1 and x.numel() > 2**22:  # torch.quantile takes at most 2**24 values
        x = x[::math.ceil(x.numel() / 2**22)]
    loc = x.median(dim=dim).values
    q = torch.quantile(x, torch.tensor([0.25, 0.75]), dim=dim)
    scale = (q[1] - q[0]) / 1.349
    floor = 1e-6 + 1e-3 * x.abs().mean(dim=dim)
    return loc, torch.maximum(scale, floor)


def combine(components: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(N, C) raw component scores -> (N,) mean z-score."""
    return ((components.float() - loc) / scale).mean(dim=1)


TAIL = 0.1  # the top tenth of the held-out scores is the tail the threshold is fitted to
MIN_TAIL = 10  # and at least this many scores


def threshold_at_fpr(scores: torch.Tensor, fpr: float) -> float:
    """The score that about fpr of good images exceed, from held-out good scores.

    Where at least max(MIN_TAIL, TAIL * n) held-out scores lie above it, it is their
    empirical (1 - fpr) quantile. Further out (an fpr of 0.01 on 400 images leaves 4 scores
    above it, and the 4th largest swings widely between reference sets) the tail is fitted:
    above u, the largest score below the top k, the excesses are taken as exponential with
    their mean as scale (peaks over threshold; a maximum over many pixels has a Gumbel-like,
    that is exponential, tail), so P(score > u + t) = (k / n) exp(-t / mean excess)."""
    if not 0.0 < fpr < 1.0:
        raise DataError(f"--fpr must be in (0, 1), got {fpr}")
    s = scores.double().sort().values
    n = s.numel()
    k = min(n - 1, max(MIN_TAIL, math.ceil(TAIL * n)))
    if fpr * (n + 1) >= k:
        # The j-th largest of n exceeds a fresh good score with probability j/(n+1).
        return float(s[n - math.floor(fpr * (n + 1))])
    u = s[n - k - 1]
    scale = float((s[n - k:] - u).mean())
    return float(u) + scale * math.log(k / (n * fpr))
