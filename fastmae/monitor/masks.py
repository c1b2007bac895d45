"""Complementary masks: k = round(1/(1-r)) passes whose visible sets partition the patches,
so that every patch is hidden from, and predicted by, the other k-1 passes of a round.
Several rounds use different random partitions."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class ComplementaryMasks:
    noise: torch.Tensor      # (R*k, L) float: argsort keeps exactly `keep` lowest = the visible set
    visible: torch.Tensor    # (R*k, L) bool
    passes: int              # k
    rounds: int              # R
    keep: int                # visible patches per pass
    mask_ratio: float        # the ratio to give forward_encoder so that it keeps `keep` patches

    @property
    def hidden(self) -> torch.Tensor:
        return ~self.visible


def passes_for(mask_ratio: float) -> int:
    """k = round(1/(1-r)), at least 2 (a patch must be hidden in some pass)."""
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
    return max(2, round(1.0 / (1.0 - mask_ratio)))


def complementary_masks(num_patches: int, mask_ratio: float = 0.75, rounds: int = 1,
                        seed: int = 0) -> ComplementaryMasks:
    """R rounds of k passes. In each round a seeded random permutation of the L patches is cut
    into k groups; pass j shows group j. When k does not divide L every pass shows
    ceil(L/k) patches and the short last group is topped up from the first group (those
    patches are shown twice and hidden k-2 times instead of k-1)."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    L = int(num_patches)
    k = passes_for(mask_ratio)
    if k > L:
        raise ValueError(f"{L} patches cannot be split into {k} passes (mask_ratio {mask_ratio})")
    keep = math.ceil(L / k)
    g = torch.Generator().manual_seed(int(seed))
    visible = torch.zeros(rounds * k, L, dtype=torch.bool)
    noise = torch.empty(rounds * k, L)
    for r in range(rounds):
        perm = torch.randperm(L, generator=g)
        for j in range(k):
            ids = perm[j * keep:(j + 1) * keep]
            if len(ids) < keep:
                ids = torch.cat([ids, perm[:keep - len(ids)]])
            row = r * k + j
            visible[row, ids] = True
            # Visible patches rank first (noise < 1) in the order drawn; the rest after.
            noise[row] = 1.0 + torch.rand(L, generator=g)
            noise[row, ids] = torch.arange(keep, dtype=torch.float32) / keep
    # forward_encoder keeps int(L * (1 - ratio)) patches: aim half a patch above `keep`
    # so that float rounding can never drop one.
    ratio = (L - keep - 0.5) / L
    return ComplementaryMasks(noise, visible, k, rounds, keep, ratio)
