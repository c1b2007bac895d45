"""The decoder input in one pass: visible tokens back to their original places, the mask
token everywhere else, positions added.

    out[b, 0]     = x[b, 0] + pos[0]                                       (cls)
    out[b, 1 + l] = (x[b, 1 + r] if r < K else mask_token) + pos[1 + l],   r = ids_restore[b, l]

Backward scatters the visible rows of grad_out back to grad_x (ids_restore is a
permutation, so every row of grad_x is written exactly once) and sums the masked rows
into per-program partials of the mask token's gradient (summed on the host: deterministic,
no atomics). A tile is ROWS output rows by BLOCK_D features; a backward program
walks STEPS tiles down the rows."""
import torch
import triton
import triton.language as tl

from .device import guard

MAX_BLOCK_D = 1024
TILE = 4096  # elements per tile
MAX_STEPS = 8  # backward: row tiles per program


@triton.jit
def _unshuffle_fwd_kernel(
    x_ptr,  # (B, 1+K, D), strides (s_xb, s_xn, s_xd)
    mask_ptr,  # (1, 1, D) mask token, stride s_md along D
    ids_ptr,  # (B, L) int32/int64, strides (s_rb, s_rl): ids_restore
    pos_ptr,  # (1, 1+L, D), strides (s_pn, s_pd)
    out_ptr,  # (B, 1+L, D) contiguous
    s_xb, s_xn, s_xd,
    s_md,
    s_rb, s_rl,
    s_pn, s_pd,
    K, L, D,
    ROWS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    rblk = tl.program_id(1).to(tl.int64)
    dblk = tl.program_id(2).to(tl.int64)
    rows = rblk * ROWS + tl.arange(0, ROWS)  # output row j in [0, 1+L)
    cols = dblk * BLOCK_D + tl.arange(0, BLOCK_D)
    row_ok = rows < L + 1
    col_ok = cols < D
    is_tok = row_ok & (rows > 0)
    r = tl.load(ids_ptr + b * s_rb + (rows - 1) * s_rl, mask=is_tok, other=0).to(tl.int64)
    from_x = row_ok & ((rows == 0) | (r < K))
    src_row = tl.where(rows == 0, 0, r + 1)
    ok2 = row_ok[:, None] & col_ok[None, :]

    xv = tl.load(x_ptr + b * s_xb + src_row[:, None] * s_xn + cols[None, :] * s_xd,
                 mask=from_x[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
    mt = tl.load(mask_ptr + cols * s_md, mask=col_ok, other=0.0).to(tl.float32)
    pos = tl.load(pos_ptr + rows[:, None] * s_pn + cols[None, :] * s_pd, mask=ok2,
                  other=0.0).to(tl.float32)
    val = tl.where(from_x[:, None], xv, mt[None, :]) + pos
    tl.store(out_ptr + (b * (L + 1) + rows[:, None]) * D + cols[None, :],
             val.to(out_ptr.dtype.element_ty), mask=ok2)


@triton.jit
def _unshuffle_bwd_kernel(
    g_ptr,  # (B, 1+L, D) grad of out, strides (s_gb, s_gn, s_gd)
    ids_ptr,  # (B, L) ids_restore, strides (s_rb, s_rl)
    gx_ptr,  # (B, 1+K, D) contiguous grad of x
    gm_ptr,  # (B * n_row_blocks, D) contiguous fp32 partial sums for the mask token
    s_gb, s_gn, s_gd,
    s_rb, s_rl,
    K, L, D, N_RBLK,
    ROWS: tl.constexpr,
    STEPS: tl.constexpr,  # tiles of ROWS rows per program: fewer partial sums to add up
    BLOCK_D: tl.constexpr,
    MASK_GRAD: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    rblk = tl.program_id(1).to(tl.int64)
    dblk = tl.program_id(2).to(tl.int64)
    cols = dblk * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < D
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for step in range(STEPS):
        rows = (rblk * STEPS + step) * ROWS + tl.arange(0, ROWS)
        row_ok = rows < L + 1
        is_tok = row_ok & (rows > 0)
        r = tl.load(ids_ptr + b * s_rb + (rows - 1) * s_rl, mask=is_tok, other=0).to(tl.int64)
        to_x = row_ok & ((rows == 0) | (r < K))
        dst_row = tl.where(rows == 0, 0, r + 1)
        ok2 = row_ok[:, None] & col_ok[None, :]
        g = tl.load(g_ptr + b * s_gb + rows[:, None] * s_gn + cols[None, :] * s_gd, mask=ok2,
                    other=0.0).to(tl.float32)
        tl.store(gx_ptr + (b * (K + 1) + dst_row[:, None]) * D + cols[None, :],
                 g.to(gx_ptr.dtype.element_ty), mask=to_x[:, None] & col_ok[None, :])
        if MASK_GRAD:
            masked = is_tok & (r >= K)
            acc += tl.sum(tl.where(masked[:, None], g, 0.0), axis=0)
    if MASK_GRAD:
        tl.store(gm_ptr + (b * N_RBLK + rblk) * D + cols, acc, mask=col_ok)


def _tiling(L: int, D: int) -> tuple[int, int]:
    block_d = min(triton.next_power_of_2(D), MAX_BLOCK_D)
    rows = max(1, min(TILE // block_d, triton.next_power_of_2(L + 1)))
    return rows, block_d


def _check_out(t, shape, dtype, device, name):
    if tuple(t.shape) != shape or t.dtype != dtype or t.device != device or not t.is_contiguous():
        raise ValueError(f"{name} must be a contiguous {dtype} tensor of shape {shape} on {device}, "
                         f"got {t.dtype} {tuple(t.shape)} on {t.device}")


def unshuffle_fwd(x: torch.Tensor, mask_token: torch.Tensor, ids_restore: torch.Tensor,
                  pos_embed: torch.Tensor, out_dtype: torch.dtype | None = None,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """x (B, 1+K, D), mask_token (1, 1, D), ids_restore (B, L), pos_embed (1, 1+L, D)
    -> (B, 1+L, D) in out_dtype (default: x's dtype promoted with pos_embed's)."""
    B, K1, D = x.shape
    L = ids_restore.shape[1]
    dtype = out_dtype or torch.promote_types(x.dtype, pos_embed.dtype)
    shape = (B, L + 1, D)
    if out is None:
        out = torch.empty(shape, dtype=dtype, device=x.device)
    else:
        _check_out(out, shape, dtype, x.device, "out")
    if out.numel() == 0:
        return out
    rows, block_d = _tiling(L, D)
    grid = (B, triton.cdiv(L + 1, rows), triton.cdiv(D, block_d))
    with guard(x):
        _unshuffle_fwd_kernel[grid](
            x, mask_token, ids_restore, pos_embed, out,
            *x.stride(), mask_token.stride(-1), *ids_restore.stride(),
            pos_embed.stride(-2), pos_embed.stride(-1),
            K1 - 1, L, D,
            ROWS=rows, BLOCK_D=block_d,
        )
    return out


def unshuffle_bwd(grad_out: torch.Tensor, ids_restore: torch.Tensor, num_visible: int,
                  x_dtype: torch.dtype, mask_grad: bool = True,
                  grad_x: torch.Tensor | None = None):
    """grad_out (B, 1+L, D) -> (grad_x (B, 1+K, D) in x_dtype, grad of the mask token
    (D,) in fp32, or None when mask_grad is False)."""
    B, L1, D = grad_out.shape
    L, K = L1 - 1, num_visible
    shape = (B, K + 1, D)
    if grad_x is None:
        grad_x = torch.empty(shape, dtype=x_dtype, device=grad_out.device)
    else:
        _check_out(grad_x, shape, x_dtype, grad_out.device, "grad_x")
    rows, block_d = _tiling(L, D)
    steps = min(MAX_STEPS, triton.cdiv(L + 1, rows))
    n_rblk = triton.cdiv(L + 1, rows * steps)
    partial = torch.empty((B * n_rblk, D) if mask_grad else (1,), dtype=torch.float32,
                          device=grad_out.device)
    if grad_out.numel():
        grid = (B, n_rblk, triton.cdiv(D, block_d))
        with guard(grad_out):
            _unshuffle_bwd_kernel[grid](
                grad_out, ids_restore, grad_x, partial,
                *grad_out.stride(), *ids_restore.stride(),
                K, L, D, n_rblk,
                ROWS=rows, STEPS=steps, BLOCK_D=block_d, MASK_GRAD=mask_grad,
            )
    grad_mask = partial.sum(0) if mask_grad else None
    return grad_x, grad_mask
