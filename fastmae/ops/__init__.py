"""The fused MAE ops. Each takes `kernels="auto"|"triton"|"torch"` (see dispatch)."""
from .gather import gather_visible_patches
from .loss import masked_pixel_loss
from .patchify import check_images as patchify_check, patchify, unpatchify
from .unshuffle import unshuffle_with_mask_token

__all__ = ["gather_visible_patches", "unshuffle_with_mask_token", "masked_pixel_loss",
           "patchify", "unpatchify", "patchify_check"]
