"""Calibration on held-out reference images: each component score is put on a common scale
(its robust z-score over the held-out images), the components are averaged into one score,
and the alarm threshold is that score's (1 - fpr) quantile over the held-out images."""
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


def threshold_at_fpr(scores: torch.Tensor, fpr: float) -> float:
    """The (1 - fpr) quantile of held-out good scores: about fpr of good images score above it.
    With fewer than 1/fpr held-out images it is their maximum (a smaller real fpr)."""
    if not 0.0 < fpr < 1.0:
        raise DataError(f"--fpr must be in (0, 1), got {fpr}")
    s = scores.float().sort().values
    n = s.numel()
    # The k-th largest of n exceeds a fresh good score with probability k/(n+1).
    k = max(1, math.floor(fpr * (n + 1)))
    return float(s[n - k])
