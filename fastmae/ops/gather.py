"""gather_visible_patches: the visible patches of an image batch, in patchify order,
read straight from the images so the patch embedding runs on visible patches only."""
import torch

from . import dispatch
from .patchify import check_images, patchify


def gather_visible_patches_torch(imgs: torch.Tensor, ids_keep: torch.Tensor, patch_size: int) -> torch.Tensor:
    patches = patchify(imgs, patch_size)
    return torch.gather(patches, 1, ids_keep.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))


def gather_visible_patches(imgs: torch.Tensor, ids_keep: torch.Tensor, patch_size: int,
                           kernels: str = "auto") -> torch.Tensor:
    """imgs (B, C, H, W), ids_keep (B, K) int64 -> (B, K, p*p*C) in imgs' dtype.
    Carries no gradient to imgs (MAE never needs one)."""
    h, w = check_images(imgs, patch_size)
    if ids_keep.ndim != 2 or ids_keep.shape[0] != imgs.shape[0]:
        raise ValueError(f"ids_keep must be (B, K) with B={imgs.shape[0]}, got {tuple(ids_keep.shape)}")
    dispatch.check_kernels(kernels)
    dispatch.record("gather_visible_patches", "torch")
    return gather_visible_patches_torch(imgs.detach(), ids_keep, patch_size)
