"""add_layer_norm: the residual add fused into the LayerNorm that follows it.

    new_residual = x + residual   (x itself when residual is None)
    y            = LayerNorm(new_residual)

The Triton path writes y in the activation dtype (the autocast dtype under autocast, else
new_residual's dtype) with fp32 statistics, and runs as the custom ops
fastmae::add_layer_norm / fastmae::add_layer_norm_backward, which torch.compile traces
through without a graph break. The torch path is F.layer_norm, as nn.LayerNorm runs it."""
import math

import torch
import torch.nn.functional as F

from . import dispatch

OP = "add_layer_norm"
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def add_layer_norm_torch(x, residual, weight, bias, eps=1e-6):
    h = x if residual is None else x + residual
    return F.layer_norm(h, (int(h.shape[-1]),), weight, bias, eps), h  # int(): a constant to ONNX tracing


def _empty(t: torch.Tensor) -> torch.Tensor:
    """Stands for 'no tensor' in a custom op's outputs (which cannot be None)."""
    return t.new_empty(0)


@torch.library.custom_op("fastmae::add_layer_norm", mutates_args=())
def _fwd_op(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
            bias: torch.Tensor | None, eps: float, out_dtype: torch.dtype
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    dispatch.record(OP, "triton")  # here: the body runs in compiled graphs too
    from ..kernels import layer_norm
    y, h, mean, rstd = layer_norm.add_layer_norm_fwd(x, residual, weight, bias, eps, out_dtype)
    return y, (h if h is not None else _empty(x)), mean, rstd


@_fwd_op.register_fake
def _(x, residual, weight, bias, eps, out_dtype):
    rows = math.prod(x.shape[:-1])
    h = (x.new_empty(x.shape, dtype=torch.promote_types(x.dtype, residual.dtype))
         if residual is not None else _empty(x))
    stats = x.new_empty((rows,), dtype=torch.float32)
    return x.new_empty(x.shape, dtype=out_dtype), h, stats, torch.empty_like(stats)


@torch.library.custom_op("fastmae::add_layer_norm_backward", mutates_args=())
def _bwd_op(dy: torch.Tensor, dh: torch.Tensor | None, h: torch.Tensor, weight: torch.Tensor,
            mean: torch.Tensor, rstd: torch.Tensor, has_bias: bool, x_dtype: torch.dtype,
            residual_dtype: torch.dtype | None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from ..kernels import layer_norm
    dx, dr, dw, db = layer_norm.add_layer_norm_bwd(dy, dh, h, weight, mean, rstd, has_bias,
                                                   x_dtype, residual_dtype)
    return dx, (dr if dr is not None else _empty(dx)), dw, (db if db is not None else _empty(dw))


@_bwd_op.register_fake
def _(dy, dh, h, weight, mean, rstd, has_bias, x_dtype, residual_dtype):
    dx = h.new_empty(h.shape, dtype=x_dtype)
    store_dr = residual_dtype is not None and residual_dtype != x_dtype
    dr = h.new_empty(h.shape, dtype=residual_dtype) if store_dr else _empty(dx)
    dw = h.new_empty(h.shape[-1:], dtype=torch.float32)
    return dx, dr, dw, (torch.empty_like(dw) if has_bias else _empty(dw))


def _setup_context(ctx, inputs, output):
    x, residual, weight, bias, _eps, _out_dtype = inputs
    _y, h, mean, rstd = output
    ctx.save_for_backward(h if residual is not None else x, weight, mean, rstd)
    ctx.has_residual, ctx.has_bias = residual is not None, bias is not None
    ctx.dtypes = (x.dtype, residual.dtype if residual is not None else None,
                  weight.dtype, bias.dtype if bias is not None else None)
    ctx.set_materialize_grads(False)  # an unused new_residual costs no zero tensor in backward


def _backward(ctx, dy, dh, _dmean, _drstd):
    h, weight, mean, rstd = ctx.saved_tensors
    x_dtype, res_dtype, w_dtype, b_dtype = ctx.dtypes
    if dy is None:  # y unused: only the residual output carries a gradient
        return (dh.to(x_dtype) if dh is not None else None,
                dh.to(res_dtype) if dh is not None and ctx.has_residual else None,
                None, None, None, None)
    dx, dr, dw, db = _bwd_op(dy, dh if ctx.has_residual else None, h, weight, mean, rstd,
                             ctx.has_bias, x_dtype, res_dtype)
    # x and residual share one gradient; the kernel writes a second copy only when their
    # dtypes differ (bf16 branch output, fp32 residual stream).
    d_res = None if not ctx.has_residual else dx if res_dtype == x_dtype else dr
    return dx, d_res, dw.to(w_dtype), (db.to(b_dtype) if ctx.has_bias else None), None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def check_inputs(x, residual, weight, bias) -> None:
    """Shapes, dtypes and devices (never values: no device sync, no graph break)."""
    if x.ndim < 1 or weight.ndim != 1 or weight.shape[0] != x.shape[-1]:
        raise ValueError(f"add_layer_norm needs x (..., N) and weight (N,); got {tuple(x.shape)} "
                         f"and {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != tuple(weight.shape):
        raise ValueError(f"bias must have the weight's shape {tuple(weight.shape)}, got {tuple(bias.shape)}")
    if residual is not None and tuple(residual.shape) != tuple(x.shape):
        raise ValueError(f"residual must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}")
    tensors = [t for t in (x, residual, weight, bias) if t is not None]
    bad = [t.dtype for t in tensors if t.dtype not in DTYPES]
    if bad:
        raise ValueError(f"add_layer_norm takes fp32, bf16 or fp16 tensors, got {bad[0]}")
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"add_layer_norm inputs are on different devices: {sorted(map(str, devices))}")


def activation_dtype(h_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype y is written in: the autocast dtype under autocast (the next Linear would
    cast to it anyway), else the normalised tensor's own."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return h_dtype


def add_layer_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                   bias: torch.Tensor | None, eps: float = 1e-6, kernels: str = "auto"
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., N), residual like x or None, weight and bias (N,) -> (y, new_residual) with
    new_residual = x + residual (x when residual is None) and y = LayerNorm(new_residual)."""
    check_inputs(x, residual, weight, bias)
    impl = dispatch.resolve(kernels, x)
    if impl == "torch":
        dispatch.record(OP, impl)
        return add_layer_norm_torch(x, residual, weight, bias, eps)
    h_dtype = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
    y, h, _mean, _rstd = _fwd_op(x, residual, weight, bias, float(eps),
                                 activation_dtype(h_dtype, x.device))
    return y, (h if residual is not None else x)
