"""The fused MAE ops. Each takes `kernels="auto"|"triton"|"torch"` (see dispatch)."""
from .bias_gelu import bias_gelu
from .gather import gather_visible_patches
from .layer_norm import add_layer_norm
from .loss import masked_pixel_loss
from .patchify import check_images as patchify_check, patchify, unpatchify
from .unshuffle import unshuffle_with_mask_token

__all__ = ["gather_visible_patches", "unshuffle_with_mask_token", "masked_pixel_loss",
           "add_layer_norm", "bias_gelu", "patchify", "unpatchify", "patchify_check"]
