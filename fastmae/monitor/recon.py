"""Reconstruction-error heatmaps: the MAE predicts every patch from complementary masks and
the error is measured in the space the model trained in (per-patch normalised pixels when
it used norm_pix_loss, else the normalised image)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import ops
from .masks import ComplementaryMasks

_NORM_PIX_EPS = 1e-6  # the official norm_pix_loss: unbiased variance, eps inside the sqrt


def training_target(model, imgs: torch.Tensor) -> torch.Tensor:
    """(B, L, p*p*C) patches as the model's loss saw them."""
    target = ops.patchify(imgs.float(), model.patch_size)
    if model.norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + _NORM_PIX_EPS) ** 0.5
    return target


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """(..., H, W) maps smoothed by a separable Gaussian (reflect padding)."""
    if sigma <= 0:
        return maps
    r = max(1, int(3 * sigma + 0.5))
    x = torch.arange(-r, r + 1, dtype=torch.float32, device=maps.device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    lead, (h, w) = maps.shape[:-2], maps.shape[-2:]
    m = F.pad(maps.reshape(-1, 1, h, w), (r, r, r, r), mode="reflect")
    m = F.conv2d(m, k.view(1, 1, 1, -1))
    m = F.conv2d(m, k.view(1, 1, -1, 1))
    return m.view(*lead, h, w)


@torch.no_grad()
def reconstruction_error(model, imgs: torch.Tensor, masks: ComplementaryMasks, smooth: float = 0.0,
                         max_batch: int = 256) -> torch.Tensor:
    """Per-pixel squared error (B, H, W), float32, averaged over the channels. smooth = 0: the
    error of every patch's prediction, averaged over the passes that hid it. smooth > 0: the
    passes' predictions are averaged into one reconstruction, and it and the target are
    low-passed by a Gaussian of `smooth` pixels before they are compared. An MSE-trained MAE
    predicts the local mean of fine texture whose phase it cannot pin down, so the raw error
    is that texture everywhere; the low-passed error is what the model does predict from
    context (colour, shading, shape), and a defect that changes those stands out.
    The B images x R*k passes run as forward passes of at most max_batch images (each
    image's passes stay in one forward)."""
    P = masks.noise.shape[0]
    noise_all = masks.noise.to(imgs.device)
    per = max(1, max_batch // P)
    unpatch = lambda t: ops.unpatchify(t, model.patch_size, model.grid_size, model.in_chans)  # noqa: E731
    maps = []
    for start in range(0, imgs.shape[0], per):
        x = imgs[start:start + per]
        b = x.shape[0]
        rep = x.repeat_interleave(P, dim=0)
        latent, mask, ids_restore = model.forward_encoder(rep, masks.mask_ratio, noise_all.repeat(b, 1))
        pred = model.forward_decoder(latent, ids_restore).float().view(b, P, -1, model.patch_size ** 2 * model.in_chans)
        target = training_target(model, x)                              # (b, L, D)
        hid = mask.view(b, P, -1, 1).float()                            # 1 = hidden in that pass
        count = hid.sum(1).clamp_min(1.0)
        if smooth > 0:
            recon = unpatch((pred * hid).sum(1) / count)
            err = (gaussian_blur(recon, smooth) - gaussian_blur(unpatch(target), smooth)).pow_(2)
        else:
            err = unpatch(((pred - target[:, None]).pow_(2) * hid).sum(1) / count)
        maps.append(err.mean(1))                                        # (b, H, W)
    return torch.cat(maps)
