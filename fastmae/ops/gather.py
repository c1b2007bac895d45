"""gather_visible_patches: the visible patches of an image batch, in patchify order,
read straight from the images so the patch embedding runs on visible patches only."""
import torch

from . import dispatch
from .patchify import check_images, patchify

OP = "gather_visible_patches"


def gather_visible_patches_torch(imgs: torch.Tensor, ids_keep: torch.Tensor, patch_size: int) -> torch.Tensor:
    patches = patchify(imgs, patch_size)
    return torch.gather(patches, 1, ids_keep.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))


@torch.library.custom_op("fastmae::gather_visible_patches", mutates_args=())
def _gather_op(imgs: torch.Tensor, ids_keep: torch.Tensor, patch_size: int) -> torch.Tensor:
    dispatch.record(OP, "triton")  # here: the body runs in compiled graphs too
    from ..kernels import gather
    return gather.gather_fwd(imgs, ids_keep, patch_size)


@_gather_op.register_fake
def _(imgs, ids_keep, patch_size):
    B, C = imgs.shape[:2]
    return imgs.new_empty((B, ids_keep.shape[1], patch_size * patch_size * C))


def check_indices(ids: torch.Tensor, batch: int, num_patches: int, name: str) -> None:
    """Shape, dtype and (on CPU, where it costs no device sync, and not while torch.compile
    traces) range of an index tensor."""
    if ids.ndim != 2 or ids.shape[0] != batch:
        raise ValueError(f"{name} must be (B, K) with B={batch}, got {tuple(ids.shape)}")
    if ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{name} must be an int64 or int32 tensor, got {ids.dtype}")
    if dispatch.reads_values(ids) and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_patches):
        raise ValueError(f"{name} holds patch indices outside [0, {num_patches}): "
                         f"min {int(ids.min())}, max {int(ids.max())}")


def gather_visible_patches(imgs: torch.Tensor, ids_keep: torch.Tensor, patch_size: int,
                           kernels: str = "auto") -> torch.Tensor:
    """imgs (B, C, H, W), ids_keep (B, K) int64 -> (B, K, p*p*C) in imgs' dtype.
    Carries no gradient to imgs (MAE never needs one)."""
    h, w = check_images(imgs, patch_size)
    if not imgs.is_floating_point():
        raise ValueError(f"images must be a floating-point tensor, got {imgs.dtype}")
    check_indices(ids_keep, imgs.shape[0], h * w, "ids_keep")
    if ids_keep.device != imgs.device:
        raise ValueError(f"ids_keep is on {ids_keep.device} but the images are on {imgs.device}")
    impl = dispatch.resolve(kernels, imgs)
    if impl == "triton":
        return _gather_op(imgs.detach(), ids_keep, patch_size)
    dispatch.record(OP, impl)
    return gather_visible_patches_torch(imgs.detach(), ids_keep, patch_size)
