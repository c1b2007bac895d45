"""Reconstruction-error heatmaps: the MAE predicts every patch from complementary masks and
the error is measured in the space the model trained in (per-patch normalised pixels when
it used norm_pix_loss, else the normalised image)."""
from __future__ import annotations

import torch

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


@torch.no_grad()
def reconstruction_error(model, imgs: torch.Tensor, masks: ComplementaryMasks,
                         max_batch: int = 256) -> torch.Tensor:
    """Per-pixel squared error (B, H, W), float32, of the prediction of every patch averaged
    over the passes that hid it. The B images x R*k passes run as forward passes of at most
    max_batch images (each image's passes stay in one forward)."""
    P = masks.noise.shape[0]
    noise_all = masks.noise.to(imgs.device)
    hidden_all = masks.hidden.to(imgs.device, torch.float32)
    per = max(1, max_batch // P)
    maps = []
    for start in range(0, imgs.shape[0], per):
        x = imgs[start:start + per]
        b = x.shape[0]
        rep = x.repeat_interleave(P, dim=0)
        latent, mask, ids_restore = model.forward_encoder(rep, masks.mask_ratio, noise_all.repeat(b, 1))
        pred = model.forward_decoder(latent, ids_restore).float()
        target = training_target(model, x).repeat_interleave(P, dim=0)
        err = (pred - target).pow_(2).view(b, P, *pred.shape[1:])       # (b, P, L, D)
        hid = mask.view(b, P, -1, 1).float()                            # 1 = hidden in that pass
        err = (err * hid).sum(1) / hid.sum(1).clamp_min(1.0)            # (b, L, D)
        pixels = ops.unpatchify(err, model.patch_size, model.grid_size, model.in_chans)
        maps.append(pixels.mean(1))                                     # (b, H, W)
    del hidden_all
    return torch.cat(maps)
