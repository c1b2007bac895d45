"""Patch layout shared by the model, the loss and the pictures: the official
'nchpwq->nhwpqc' order, generalised to C channels and H != W."""
import torch


def check_images(imgs: torch.Tensor, patch_size: int, in_chans: int | None = None) -> tuple[int, int]:
    """Validate a (B, C, H, W) batch; returns the patch grid (h, w)."""
    if imgs.ndim != 4:
        raise ValueError(f"images must be a 4-D (B, C, H, W) tensor, got shape {tuple(imgs.shape)}")
    _, c, hgt, wid = imgs.shape
    if in_chans is not None and c != in_chans:
        raise ValueError(f"images have {c} channels but the model expects in_chans={in_chans}")
    if hgt % patch_size or wid % patch_size:
        raise ValueError(f"image size {hgt}x{wid} is not a multiple of the patch size {patch_size}")
    return hgt // patch_size, wid // patch_size


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, p*p*C)."""
    h, w = check_images(imgs, patch_size)
    B, C, p = imgs.shape[0], imgs.shape[1], patch_size
    x = imgs.reshape(B, C, h, p, w, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(B, h * w, p * p * C)


def unpatchify(x: torch.Tensor, patch_size: int, grid_hw: tuple[int, int], in_chans: int) -> torch.Tensor:
    """(B, L, p*p*C) -> (B, C, H, W)."""
    h, w = grid_hw
    B, p, C = x.shape[0], patch_size, in_chans
    if x.shape[1] != h * w or x.shape[2] != p * p * C:
        raise ValueError(f"patches of shape {tuple(x.shape)} do not fit a {h}x{w} grid of "
                         f"{p}x{p}x{C} patches")
    x = x.reshape(B, h, w, p, p, C)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(B, C, h * p, w * p)
