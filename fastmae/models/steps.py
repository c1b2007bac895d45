"""The MAE step functions, written once: masking, the encoder input (patch embedding of
the visible patches only), the decoder input (decoder_embed + unshuffle with the mask
token + positions) and the masked pixel loss.

Plain functions of tensors and modules, so that fastmae's own model and the official /
Hugging Face models patched by fastmae.apply_to run the very same code. Semantics are
the official models_mae.py: len_keep = int(L * (1 - mask_ratio)), mask 1 = removed."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from ..settings import ConfigError


def random_masking(batch: int, length: int, mask_ratio: float, noise: torch.Tensor | None, device):
    """Per-sample shuffle by argsort of uniform noise (torch.rand(batch, length) when None,
    the same draw as the official code). Returns ids_keep (B, K), mask (B, L) float32 with
    1 = removed, ids_restore (B, L)."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ConfigError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    len_keep = int(length * (1 - mask_ratio))
    if noise is None:
        noise = torch.rand(batch, length, device=device)
    elif tuple(noise.shape) != (batch, length):
        raise ConfigError(f"noise must have shape (batch, num_patches) = ({batch}, {length}), got "
                         f"{tuple(noise.shape)}")
    ids_shuffle = torch.argsort(noise.to(device), dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    # float32 like the official torch.ones(...) gathered by ids_restore (and Hugging Face's).
    mask = (ids_restore >= len_keep).to(torch.float32)
    return ids_shuffle[:, :len_keep], mask, ids_restore


def conv_as_linear(proj: nn.Conv2d) -> torch.Tensor:
    """A patch conv weight (D, C, p, p) as a (D, p*p*C) matrix in patchify order (p, q, c)."""
    w = proj.weight
    return w.permute(0, 2, 3, 1).reshape(w.shape[0], -1)


def check_no_image_grad(imgs: torch.Tensor) -> None:
    if imgs.requires_grad and torch.is_grad_enabled():
        raise ConfigError("fastmae's MAE forward computes no gradient with respect to the input "
                          "images (MAE training never needs one); pass images that do not require grad")


def encoder_input(imgs: torch.Tensor, ids_keep: torch.Tensor, proj: nn.Conv2d,
                  pos_embed: torch.Tensor, cls_token: torch.Tensor, kernels: str) -> torch.Tensor:
    """(B, 1+K, D): cls + patch embedding of the kept patches only, each plus its position.
    The same values as conv-embedding every patch, adding positions and gathering, without
    embedding the patches that are thrown away. pos_embed (1, 1+L, D) includes the cls slot."""
    check_no_image_grad(imgs)
    patches = ops.gather_visible_patches(imgs, ids_keep, proj.kernel_size[0], kernels)
    w = conv_as_linear(proj)
    x = F.linear(patches.to(w.dtype), w, proj.bias) + pos_embed[0, 1:][ids_keep]
    cls = (cls_token + pos_embed[:, :1]).expand(x.shape[0], -1, -1)
    return torch.cat([cls, x], dim=1)


def decoder_input(latent: torch.Tensor, decoder_embed: nn.Module, mask_token: torch.Tensor,
                  ids_restore: torch.Tensor, pos_embed: torch.Tensor, kernels: str) -> torch.Tensor:
    """(B, 1+L, Dd): decoder_embed of the encoder output (B, 1+K, D), mask tokens in the
    removed slots, unshuffled to grid order, plus decoder positions, in one pass."""
    x = decoder_embed(latent)
    return ops.unshuffle_with_mask_token(x, mask_token, ids_restore.to(x.device), pos_embed, kernels)


def pixel_loss(imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, patch_size: int,
               norm_pix_loss: bool, kernels: str) -> torch.Tensor:
    """Mean over removed patches of the per-patch squared error against the (optionally
    per-patch normalised) pixels, read straight from the images."""
    return ops.masked_pixel_loss(pred, imgs, mask, patch_size, bool(norm_pix_loss), kernels)
