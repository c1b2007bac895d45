"""bias_gelu: gelu(x + bias) with the exact (erf) GELU, for an MLP's first Linear run as a
bare matmul. The Triton path saves only x for backward (not the output) and reduces the
bias gradient in the kernel; it runs as the custom ops fastmae::bias_gelu /
fastmae::bias_gelu_backward, which torch.compile traces through without a graph break."""
import torch
import torch.nn.functional as F

from . import dispatch

OP = "bias_gelu"
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def bias_gelu_torch(x, bias):
    return F.gelu(x + bias.to(x.dtype))


@torch.library.custom_op("fastmae::bias_gelu", mutates_args=())
def _fwd_op(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    dispatch.record(OP, "triton")  # here: the body runs in compiled graphs too
    from ..kernels import bias_gelu
    return bias_gelu.bias_gelu_fwd(x, bias)


@_fwd_op.register_fake
def _(x, bias):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("fastmae::bias_gelu_backward", mutates_args=())
def _bwd_op(dout: torch.Tensor, x: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from ..kernels import bias_gelu
    return bias_gelu.bias_gelu_bwd(dout, x, bias)


@_bwd_op.register_fake
def _(dout, x, bias):
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            bias.new_empty(bias.shape, dtype=torch.float32))


def _setup_context(ctx, inputs, output):
    x, bias = inputs
    ctx.save_for_backward(x, bias)


def _backward(ctx, dout):
    x, bias = ctx.saved_tensors
    dx, dbias = _bwd_op(dout, x, bias)
    return dx, dbias.to(bias.dtype)


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def bias_gelu(x: torch.Tensor, bias: torch.Tensor, kernels: str = "auto") -> torch.Tensor:
    """x (..., N), bias (N,) -> gelu(x + bias) in x's dtype (exact erf GELU)."""
    if x.ndim < 1 or bias.ndim != 1 or bias.shape[0] != x.shape[-1]:
        raise ValueError(f"bias_gelu needs x (..., N) and bias (N,); got {tuple(x.shape)} and "
                         f"{tuple(bias.shape)}")
    bad = [t.dtype for t in (x, bias) if t.dtype not in DTYPES]
    if bad:
        raise ValueError(f"bias_gelu takes fp32, bf16 or fp16 tensors, got {bad[0]}")
    if x.device != bias.device:
        raise ValueError(f"x is on {x.device} but bias is on {bias.device}")
    impl = dispatch.resolve(kernels, x)
    if impl == "torch":
        dispatch.record(OP, impl)
        return bias_gelu_torch(x, bias)
    return _fwd_op(x, bias)
