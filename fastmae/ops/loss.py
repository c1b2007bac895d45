"""masked_pixel_loss: mean over removed patches of the per-patch mean squared error
between the prediction and the (optionally per-patch normalised) image patches."""
import torch

from . import dispatch
from .patchify import patchify


def masked_pixel_loss_torch(pred, imgs, mask, patch_size, norm_pix_loss):
    target = patchify(imgs, patch_size).float()
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)  # unbiased, as the official code
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    loss = ((pred.float() - target) ** 2).mean(dim=-1)
    mask = mask.float()
    return (loss * mask).sum() / mask.sum().clamp(min=1.0)


def masked_pixel_loss(pred: torch.Tensor, imgs: torch.Tensor, mask: torch.Tensor, patch_size: int,
                      norm_pix_loss: bool = False, kernels: str = "auto") -> torch.Tensor:
    """pred (B, L, p*p*C), imgs (B, C, H, W), mask (B, L) with 1 = removed -> fp32 scalar.
    With no removed patch at all the loss is 0 (not 0/0)."""
    if pred.ndim != 3 or mask.shape != pred.shape[:2]:
        raise ValueError(f"pred must be (B, L, p*p*C) and mask (B, L); got {tuple(pred.shape)} "
                         f"and {tuple(mask.shape)}")
    dispatch.check_kernels(kernels)
    dispatch.record("masked_pixel_loss", "torch")
    return masked_pixel_loss_torch(pred, imgs, mask, patch_size, norm_pix_loss)
