"""Residual add fused into the LayerNorm after it, forward and backward.

    h = x + residual            (the new residual stream, in x's and residual's promoted
                                 dtype; h = x when there is no residual)
    y = (h - mean) * rstd * weight + bias,   mean, rstd over the last dim in fp32

Statistics are taken of h as stored (rounded to its dtype first), so backward, which
reads h back, differentiates exactly the function the forward computed. y is written
once, in the caller's activation dtype (bf16 under autocast: no fp32 copy).

Backward, per row, with g = dy * weight and xhat = (h - mean) * rstd:

    dh = rstd * (g - xhat * mean(g * xhat) - mean(g)) + d(new residual)

and dh is the gradient of both x and residual. dweight = sum_rows dy * xhat and
dbias = sum_rows dy are reduced in two stages: each program sums its rows into one fp32
partial row, the host adds the few partials (deterministic, no atomics). A tile is ROWS
rows by BLOCK_N features; a backward program walks STEPS tiles down the rows."""
import torch
import triton
import triton.language as tl

from .device import guard

empty = torch.empty  # every output and partial-sum buffer (the tests fill them with NaN)

MAX_BLOCK_N = 8192
TILE = 4096  # elements per tile
PROGRAMS_PER_SM = 2  # backward: programs (and partial rows) per multiprocessor
CPU_PROGRAMS = 4  # backward in the interpreter


@triton.jit
def _add_layer_norm_fwd_kernel(
    x_ptr,  # (M, N), row stride s_x, unit column stride
    res_ptr,  # (M, N), row stride s_r (unused unless HAS_RESIDUAL)
    w_ptr,  # (N,) contiguous
    b_ptr,  # (N,) contiguous (unused unless HAS_BIAS)
    y_ptr,  # (M, N) contiguous, the output dtype
    h_ptr,  # (M, N) contiguous, x + residual in their promoted dtype (unused unless HAS_RESIDUAL)
    mean_ptr,  # (M,) fp32
    rstd_ptr,  # (M,) fp32
    s_x, s_r,
    M, N, eps,
    ROWS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    HAS_BIAS: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < N
    ok = row_ok[:, None] & col_ok[None, :]
    h = tl.load(x_ptr + rows[:, None] * s_x + cols[None, :], mask=ok, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + rows[:, None] * s_r + cols[None, :], mask=ok, other=0.0).to(tl.float32)
        h = (h + r).to(h_ptr.dtype.element_ty)
        tl.store(h_ptr + rows[:, None] * N + cols[None, :], h, mask=ok)
        h = h.to(tl.float32)
    mean = tl.sum(h, axis=1) / N
    centred = tl.where(ok, h - mean[:, None], 0.0)
    rstd = tl.rsqrt(tl.sum(centred * centred, axis=1) / N + eps)
    tl.store(mean_ptr + rows, mean, mask=row_ok)
    tl.store(rstd_ptr + rows, rstd, mask=row_ok)
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    y = centred * rstd[:, None] * w[None, :]
    if HAS_BIAS:
        y += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rows[:, None] * N + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _add_layer_norm_bwd_kernel(
    h_ptr,  # (M, N) the normalised input (x + residual, or x), row stride s_h
    w_ptr,  # (N,) contiguous
    dy_ptr,  # (M, N) grad of y, row stride s_dy
    dh_ptr,  # (M, N) grad of the residual output, row stride s_dh (unused unless HAS_DH)
    mean_ptr,  # (M,) fp32
    rstd_ptr,  # (M,) fp32
    dx_ptr,  # (M, N) contiguous, x's dtype
    dr_ptr,  # (M, N) contiguous, the residual's dtype (unused unless STORE_DR)
    dw_ptr,  # (n_programs, N) contiguous fp32 partial sums of dweight
    db_ptr,  # (n_programs, N) contiguous fp32 partial sums of dbias (unused unless HAS_BIAS)
    s_h, s_dy, s_dh,
    M, N, STEPS,
    ROWS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_DH: tl.constexpr,
    STORE_DR: tl.constexpr,  # the residual's dtype differs from x's: write its gradient too
    HAS_BIAS: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < N
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    acc_dw = tl.zeros([BLOCK_N], dtype=tl.float32)
    acc_db = tl.zeros([BLOCK_N], dtype=tl.float32)
    for step in range(0, STEPS):
        rows = (pid * STEPS + step) * ROWS + tl.arange(0, ROWS)
        row_ok = rows < M
        ok = row_ok[:, None] & col_ok[None, :]
        h = tl.load(h_ptr + rows[:, None] * s_h + cols[None, :], mask=ok, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + rows[:, None] * s_dy + cols[None, :], mask=ok, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + rows, mask=row_ok, other=0.0)
        rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)
        xhat = tl.where(ok, (h - mean[:, None]) * rstd[:, None], 0.0)
        g = dy * w[None, :]
        c1 = tl.sum(g * xhat, axis=1) / N
        c2 = tl.sum(g, axis=1) / N
        dh = (g - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
        if HAS_DH:
            dh += tl.load(dh_ptr + rows[:, None] * s_dh + cols[None, :], mask=ok, other=0.0).to(tl.float32)
        tl.store(dx_ptr + rows[:, None] * N + cols[None, :], dh.to(dx_ptr.dtype.element_ty), mask=ok)
        if STORE_DR:
            tl.store(dr_ptr + rows[:, None] * N + cols[None, :], dh.to(dr_ptr.dtype.element_ty), mask=ok)
        acc_dw += tl.sum(dy * xhat, axis=0)
        if HAS_BIAS:
            acc_db += tl.sum(dy, axis=0)
    tl.store(dw_ptr + pid * N + cols, acc_dw, mask=col_ok)
    if HAS_BIAS:
        tl.store(db_ptr + pid * N + cols, acc_db, mask=col_ok)


def _tiling(M: int, N: int) -> tuple[int, int, int]:
    """(ROWS, BLOCK_N, num_warps) of a tile."""
    if N > MAX_BLOCK_N:
        raise ValueError(f"rows of {N} features are wider than this kernel handles ({MAX_BLOCK_N})")
    block_n = triton.next_power_of_2(N)
    rows = max(1, min(TILE // block_n, triton.next_power_of_2(max(M, 1))))
    return rows, block_n, 4 if rows * block_n <= 2048 else 8


def _rows(t: torch.Tensor, N: int) -> torch.Tensor:
    """t as an (M, N) matrix with unit column stride (a view when it can be one)."""
    t = t.reshape(-1, N)
    return t if t.stride(-1) == 1 or t.shape[0] * N == 0 else t.contiguous()


def add_layer_norm_fwd(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                       bias: torch.Tensor | None, eps: float, out_dtype: torch.dtype,
                       out: torch.Tensor | None = None):
    """x (..., N), residual like x or None, weight/bias (N,) -> (y in out_dtype,
    h = x + residual in their promoted dtype (None without a residual), mean (M,), rstd (M,)),
    M = x.numel() // N. `out`, when given, is a contiguous buffer for y."""
    N = x.shape[-1]
    x2 = _rows(x, N)
    M = x2.shape[0]
    rows, block_n, warps = _tiling(M, N)
    if out is None:
        out = empty(x.shape, dtype=out_dtype, device=x.device)
    elif tuple(out.shape) != tuple(x.shape) or out.dtype != out_dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {out_dtype} tensor of shape {tuple(x.shape)}, "
                         f"got {out.dtype} {tuple(out.shape)}")
    r2 = _rows(residual, N) if residual is not None else None
    h = (empty(x.shape, dtype=torch.promote_types(x.dtype, residual.dtype), device=x.device)
         if residual is not None else None)
    mean = empty(M, dtype=torch.float32, device=x.device)
    rstd = empty(M, dtype=torch.float32, device=x.device)
    if M:
        with guard(x):
            _add_layer_norm_fwd_kernel[(triton.cdiv(M, rows),)](
                x2, r2 if r2 is not None else x2, weight, bias if bias is not None else weight,
                out, h if h is not None else out, mean, rstd,
                x2.stride(0), r2.stride(0) if r2 is not None else 0,
                M, N, eps,
                ROWS=rows, BLOCK_N=block_n, HAS_RESIDUAL=residual is not None,
                HAS_BIAS=bias is not None, num_warps=warps,
            )
    return out, h, mean, rstd


def _programs(tiles: int, device: torch.device) -> int:
    if device.type == "cuda":
        target = PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        target = CPU_PROGRAMS
    return max(1, min(tiles, target))


def add_layer_norm_bwd(dy: torch.Tensor, dh: torch.Tensor | None, h: torch.Tensor, weight: torch.Tensor,
                       mean: torch.Tensor, rstd: torch.Tensor, has_bias: bool, x_dtype: torch.dtype,
                       residual_dtype: torch.dtype | None):
    """dy (grad of y), dh (grad of the residual output, or None), h (the normalised input),
    weight, mean, rstd -> (dx in x_dtype, d residual in residual_dtype when that differs from
    x_dtype else None (dx is the residual's gradient too), dweight, dbias or None), the
    parameter gradients in fp32."""
    N = h.shape[-1]
    h2, dy2 = _rows(h, N), _rows(dy, N)
    dh2 = _rows(dh, N) if dh is not None else None
    M = h2.shape[0]
    rows, block_n, warps = _tiling(M, N)
    programs = _programs(triton.cdiv(M, rows), h.device)
    steps = triton.cdiv(triton.cdiv(M, rows), programs)
    store_dr = residual_dtype is not None and residual_dtype != x_dtype
    dx = empty(h.shape, dtype=x_dtype, device=h.device)
    dr = empty(h.shape, dtype=residual_dtype, device=h.device) if store_dr else None
    dw = empty((programs, N), dtype=torch.float32, device=h.device)
    db = empty((programs, N), dtype=torch.float32, device=h.device) if has_bias else None
    if M:
        with guard(h):
            _add_layer_norm_bwd_kernel[(programs,)](
                h2, weight, dy2, dh2 if dh2 is not None else dy2, mean, rstd,
                dx, dr if dr is not None else dx, dw, db if db is not None else dw,
                h2.stride(0), dy2.stride(0), dh2.stride(0) if dh2 is not None else 0,
                M, N, steps,
                ROWS=rows, BLOCK_N=block_n, HAS_DH=dh is not None, STORE_DR=store_dr,
                HAS_BIAS=has_bias, num_warps=warps,
            )
    else:
        dw.zero_()
        if db is not None:
            db.zero_()
    return dx, dr, dw.sum(0), (db.sum(0) if db is not None else None)
