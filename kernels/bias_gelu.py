"""Bias add fused with the exact (erf) GELU, for an MLP's first Linear run as a bare
matmul: out = gelu(x + bias), gelu(z) = z * Phi(z) = 0.5 z (1 + erf(z / sqrt 2)).

Backward reads only x (the matmul output, which the caller saves) and recomputes z:

    dx    = dout * (Phi(z) + z * phi(z)),   phi(z) = exp(-z^2 / 2) / sqrt(2 pi)
    dbias = sum_rows dx

dbias is reduced in two stages: each program sums its rows into one fp32 partial row,
the host adds the few partials (deterministic, no atomics). A tile is ROWS rows by
BLOCK_N features; a backward program walks STEPS tiles down the rows."""
import torch
import triton
import triton.language as tl

from .device import guard

empty = torch.empty  # every output and partial-sum buffer (the tests fill them with NaN)

MAX_BLOCK_N = 1024
TILE = 4096  # elements per tile
PROGRAMS_PER_SM = 2  # backward: row programs per multiprocessor (per column block)
CPU_PROGRAMS = 4  # backward in the interpreter


@triton.jit
def _bias_gelu_fwd_kernel(
    x_ptr,  # (M, N), row stride s_x, unit column stride
    b_ptr,  # (N,) contiguous
    out_ptr,  # (M, N) contiguous, x's dtype
    s_x,
    M, N,
    ROWS: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    ok = (rows < M)[:, None] & col_ok[None, :]
    z = tl.load(x_ptr + rows[:, None] * s_x + cols[None, :], mask=ok, other=0.0).to(tl.float32)
    z += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    out = 0.5 * z * (1.0 + tl.erf(z * 0.7071067811865476))
    tl.store(out_ptr + rows[:, None] * N + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _bias_gelu_bwd_kernel(
    x_ptr,  # (M, N), row stride s_x, unit column stride: the forward's input
    b_ptr,  # (N,) contiguous
    dout_ptr,  # (M, N), row stride s_do
    dx_ptr,  # (M, N) contiguous, x's dtype
    db_ptr,  # (n_programs, N) contiguous fp32 partial sums of dbias
    s_x, s_do,
    M, N, STEPS,
    ROWS: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    b = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for step in range(0, STEPS):
        rows = (pid * STEPS + step) * ROWS + tl.arange(0, ROWS)
        ok = (rows < M)[:, None] & col_ok[None, :]
        z = tl.load(x_ptr + rows[:, None] * s_x + cols[None, :], mask=ok, other=0.0).to(tl.float32)
        z += b[None, :]
        dout = tl.load(dout_ptr + rows[:, None] * s_do + cols[None, :], mask=ok, other=0.0).to(tl.float32)
        cdf = 0.5 * (1.0 + tl.erf(z * 0.7071067811865476))
        pdf = tl.exp(-0.5 * z * z) * 0.3989422804014327
        dx = dout * (cdf + z * pdf)  # 0 where masked: dout is
        tl.store(dx_ptr + rows[:, None] * N + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=ok)
        acc += tl.sum(dx, axis=0)
    tl.store(db_ptr + pid * N + cols, acc, mask=col_ok)


def _tiling(M: int, N: int) -> tuple[int, int]:
    block_n = min(triton.next_power_of_2(N), MAX_BLOCK_N)
    rows = max(1, min(TILE // block_n, triton.next_power_of_2(max(M, 1))))
    return rows, block_n


def _rows(t: torch.Tensor, N: int) -> torch.Tensor:
    """t as an (M, N) matrix with unit column stride (a view when it can be one)."""
    t = t.reshape(-1, N)
    return t if t.stride(-1) == 1 or t.shape[0] * N == 0 else t.contiguous()


def bias_gelu_fwd(x: torch.Tensor, bias: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., N), bias (N,) -> gelu(x + bias) in x's dtype. `out`, when given, is a
    contiguous buffer of x's shape and dtype."""
    N = x.shape[-1]
    x2 = _rows(x, N)
    M = x2.shape[0]
    if out is None:
        out = empty(x.shape, dtype=x.dtype, device=x.device)
    elif tuple(out.shape) != tuple(x.shape) or out.dtype != x.dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {x.dtype} tensor of shape {tuple(x.shape)}, "
                         f"got {out.dtype} {tuple(out.shape)}")
    if out.numel():
        rows, block_n = _tiling(M, N)
        with guard(x):
            _bias_gelu_fwd_kernel[(triton.cdiv(M, rows), triton.cdiv(N, block_n))](
                x2, bias, out, x2.stride(0), M, N, ROWS=rows, BLOCK_N=block_n,
            )
    return out


def _programs(tiles: int, col_blocks: int, device: torch.device) -> int:
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        target = max(1, PROGRAMS_PER_SM * sms // col_blocks)
    else:
        target = CPU_PROGRAMS
    return max(1, min(tiles, target))


def bias_gelu_bwd(dout: torch.Tensor, x: torch.Tensor, bias: torch.Tensor):
    """dout, x (..., N), bias (N,) -> (dx in x's dtype, dbias (N,) in fp32)."""
    N = x.shape[-1]
    x2, do2 = _rows(x, N), _rows(dout, N)
    M = x2.shape[0]
    rows, block_n = _tiling(M, N)
    col_blocks = triton.cdiv(N, block_n)
    programs = _programs(triton.cdiv(M, rows), col_blocks, x.device)
    steps = triton.cdiv(triton.cdiv(M, rows), programs)
    dx = empty(x.shape, dtype=x.dtype, device=x.device)
    partial = empty((programs, N), dtype=torch.float32, device=x.device)
    if M and N:
        with guard(x):
            _bias_gelu_bwd_kernel[(programs, col_blocks)](
                x2, bias, do2, dx, partial, x2.stride(0), do2.stride(0), M, N, steps,
                ROWS=rows, BLOCK_N=block_n,
            )
    else:
        partial.zero_()
    return dx, partial.sum(0)
