"""Gather the visible patches of an image batch, in patchify order, straight from the
images: out[b, k, (i*p + j)*C + c] = imgs[b, c, gh*p + i, gw*p + j] for the patch
ids_keep[b, k] = gh*w + gw. One program per (visible patch, block of its p*p*C values).
No backward: MAE never differentiates w.r.t. the images."""
import torch
import triton
import triton.language as tl

from .device import guard

MAX_BLOCK = 2048


@triton.jit
def _gather_fwd_kernel(
    imgs_ptr,  # (B, C, H, W), strides (s_ib, s_ic, s_ih, s_iw), any float dtype
    ids_ptr,  # (B, K) int32/int64, strides (s_db, s_dk); patch index in [0, L)
    out_ptr,  # (B, K, P) contiguous, P = p*p*C, dtype of imgs
    s_ib, s_ic, s_ih, s_iw,
    s_db, s_dk,
    K, L, GRID_W,
    C: tl.constexpr,  # constexpr: the per-element // and % by C become multiplies
    P: tl.constexpr,  # constexpr: rows of P values (588 at p=14) get vector stores
    PATCH: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # b * K + k
    blk = tl.program_id(1)  # int32: offsets inside a patch (< P) stay 32-bit, as does their division
    b = row // K
    k = row % K
    patch = tl.load(ids_ptr + b * s_db + k * s_dk).to(tl.int64)
    # An index outside the grid must not read foreign memory: such a patch comes out NaN.
    valid = (patch >= 0) & (patch < L)
    patch = tl.where(valid, patch, 0)
    gh = patch // GRID_W
    gw = patch % GRID_W

    offs = blk * BLOCK + tl.arange(0, BLOCK)  # position inside the patch vector
    in_patch = offs < P
    i = offs // (PATCH * C)  # row inside the patch
    j = (offs // C) % PATCH  # column inside the patch
    c = (offs % C).to(tl.int64)  # channel, fastest; 64-bit: c * s_ic may pass 2**31
    src = imgs_ptr + b * s_ib + c * s_ic + (gh * PATCH + i) * s_ih + (gw * PATCH + j) * s_iw
    vals = tl.load(src, mask=in_patch & valid, other=float("nan"))
    tl.store(out_ptr + row * P + offs, vals, mask=in_patch)


def gather_fwd(imgs: torch.Tensor, ids_keep: torch.Tensor, patch_size: int,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """imgs (B, C, H, W), ids_keep (B, K) -> (B, K, p*p*C) in imgs' dtype. `out`, when
    given, must be a contiguous tensor of that shape and dtype; it is overwritten."""
    B, C, H, W = imgs.shape
    K = ids_keep.shape[1]
    p = patch_size
    grid_w = W // p
    L = (H // p) * grid_w
    P = p * p * C
    shape = (B, K, P)
    if out is None:
        out = torch.empty(shape, dtype=imgs.dtype, device=imgs.device)
    elif tuple(out.shape) != shape or out.dtype != imgs.dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {imgs.dtype} tensor of shape {shape}, got "
                         f"{out.dtype} {tuple(out.shape)}")
    if out.numel() == 0:
        return out
    block = min(triton.next_power_of_2(P), MAX_BLOCK)
    grid = (B * K, triton.cdiv(P, block))
    with guard(imgs):
        _gather_fwd_kernel[grid](
            imgs, ids_keep, out,
            *imgs.stride(), *ids_keep.stride(),
            K, L, grid_w, C, P,
            PATCH=p, BLOCK=block,
        )
    return out
