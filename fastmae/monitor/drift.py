"""Has the incoming data changed? Two-sample statistics between reference and new image
embeddings: an MMD test (RBF kernel, median-heuristic bandwidth, seeded permutation
p-value), the Frechet distance of their Gaussian fits, and novelty quantiles."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..settings import DataError

MIN_NEW = 5  # an MMD test on fewer images has no power to speak of


@dataclass
class MMDResult:
    mmd2: float        # unbiased MMD^2 estimate
    p_value: float
    bandwidth: float   # RBF sigma (median pairwise distance of the pooled sample)
    permutations: int


def _mmd2_from_kernel(K: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD^2 for each row of A (P, N), the 0/1 indicator of which pooled samples are x
    (the rest are y): three quadratic forms of K, one matmul for all P splits."""
    B = 1.0 - A
    n, m = A[0].sum(), B[0].sum()
    diag = K.diagonal()
    KA, KB = A @ K, B @ K
    sxx = ((KA * A).sum(1) - A @ diag) / (n * (n - 1))
    syy = ((KB * B).sum(1) - B @ diag) / (m * (m - 1))
    return sxx + syy - 2 * (KA * B).sum(1) / (n * m)


def mmd_test(x: torch.Tensor, y: torch.Tensor, permutations: int = 1000, seed: int = 0,
             chunk: int = 200) -> MMDResult:
    """MMD two-sample test of x (n, D) vs y (m, D); p = (1 + #{perm >= observed}) / (1 + P)."""
    if x.shape[0] < 2 or y.shape[0] < MIN_NEW:
        raise DataError(f"a drift test needs at least 2 reference and {MIN_NEW} new images "
                        f"(got {x.shape[0]} and {y.shape[0]})")
    z = torch.cat([x, y]).double()
    n, N = x.shape[0], z.shape[0]
    d2 = torch.cdist(z, z).pow(2)
    off = d2[~torch.eye(N, dtype=torch.bool)]
    bandwidth = float(off.sqrt().median()) or 1.0
    K = torch.exp(-d2 / (2 * bandwidth**2))
    first = torch.zeros(1, N, dtype=torch.float64)
    first[0, :n] = 1.0
    observed = float(_mmd2_from_kernel(K, first)[0])
    g = torch.Generator().manual_seed(int(seed))
    exceed = 0
    for start in range(0, permutations, chunk):
        p = min(chunk, permutations - start)
        perm = torch.stack([torch.randperm(N, generator=g) for _ in range(p)])
        A = (perm < n).to(torch.float64)  # the first n of each shuffled order form the x side
        # A tie with the observed value counts as exceeding it (conservative); the tolerance
        # keeps the identity permutation's float re-summation from missing its own value.
        exceed += int((_mmd2_from_kernel(K, A) >= observed - 1e-12 * abs(observed)).sum())
    return MMDResult(observed, (1 + exceed) / (1 + permutations), bandwidth, permutations)


def _sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh((a + a.T) / 2)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """||mu_x - mu_y||^2 + Tr(Cx + Cy - 2 (Cx^1/2 Cy Cx^1/2)^1/2) of the Gaussian fits (as FID)."""
    x, y = x.double(), y.double()
    mx, my = x.mean(0), y.mean(0)
    cx, cy = torch.cov(x.T), torch.cov(y.T)
    s = _sqrtm_psd(cx)
    cross = _sqrtm_psd(s @ cy @ s)
    return float((mx - my).pow(2).sum() + torch.trace(cx) + torch.trace(cy) - 2 * torch.trace(cross))


def quantiles(values: torch.Tensor, qs=(0.5, 0.9, 0.99)) -> dict:
    v = values.double()
    return {f"q{round(q * 100)}": float(torch.quantile(v, q)) for q in qs}


def pca_2d(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x and y projected on the top two principal axes of x (the reference)."""
    mean = x.double().mean(0)
    _, _, v = torch.linalg.svd(x.double() - mean, full_matrices=False)
    axes = v[:2].T
    return ((x.double() - mean) @ axes).float(), ((y.double() - mean) @ axes).float()
