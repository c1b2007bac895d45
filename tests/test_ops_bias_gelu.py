"""bias_gelu: the fused bias + exact GELU Triton kernels (interpreted on CPU here),
forward and backward, against an fp64 reference and torch's own GELU."""
import math

import pytest
import torch

from fastmae.kernels import bias_gelu as bg_kernels
from fastmae.ops import bias_gelu
from fastmae.ops.bias_gelu import OP, bias_gelu_torch
from fastmae.settings import BackendUnavailable
from tests.kernel_checks import CallCounter, assert_low_precision_close, require_compiled

# N not a power of two, wider than one column block (with MAX_BLOCK_N patched), one row.
SHAPES = [(2, 5, 40), (3, 64), (1, 1, 20), (37, 24)]


def nan_empty(*args, **kwargs):
    return torch.empty(*args, **kwargs).fill_(float("nan"))


@pytest.fixture(autouse=True)
def poisoned(monkeypatch):
    """Every buffer the kernels write (outputs, partial sums) starts as NaN."""
    monkeypatch.setattr(bg_kernels, "empty", nan_empty)


def reference(x, bias):
    """fp64 GELU written out: z * Phi(z), Phi the normal CDF through erf."""
    z = x.double() + bias.double()
    return z * 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))


def run(fn, x, bias, g, cast=None):
    leaves = [t.detach().to(cast or t.dtype).requires_grad_() for t in (x, bias)]
    out = fn(*leaves)
    (out.double() * g).sum().backward()
    return out, [t.grad for t in leaves]


def triton(x, bias):
    return bias_gelu(x, bias, kernels="triton")


def make_inputs(shape, x_dtype=torch.float32, b_dtype=torch.float32):
    # values spread over GELU's curved region and both tails
    return (2.0 * torch.randn(shape)).to(x_dtype), torch.randn(shape[-1]).to(b_dtype)


@pytest.mark.parametrize("shape", SHAPES)
def test_fp32_matches_fp64(shape):
    x, b = make_inputs(shape)
    g = torch.randn(shape, dtype=torch.float64)
    with CallCounter(OP) as calls:
        out, (gx, gb) = run(triton, x, b, g)
    assert calls.ran("triton") == 1
    r_out, (r_gx, r_gb) = run(reference, x, b, g, cast=torch.float64)
    assert out.dtype == gx.dtype == gb.dtype == torch.float32
    torch.testing.assert_close(out.double(), r_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx.double(), r_gx, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gb.double(), r_gb, rtol=1e-5, atol=1e-5)


def test_several_column_blocks_and_row_steps(monkeypatch):
    # Columns split over 3 blocks and each backward program walking several row tiles.
    monkeypatch.setattr(bg_kernels, "MAX_BLOCK_N", 16)
    monkeypatch.setattr(bg_kernels, "TILE", 32)
    monkeypatch.setattr(bg_kernels, "CPU_PROGRAMS", 2)
    x, b = make_inputs((13, 40))
    g = torch.randn(13, 40, dtype=torch.float64)
    out, (gx, gb) = run(triton, x, b, g)
    r_out, (r_gx, r_gb) = run(reference, x, b, g, cast=torch.float64)
    torch.testing.assert_close(out.double(), r_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx.double(), r_gx, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gb.double(), r_gb, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("x_dtype,b_dtype", [(torch.bfloat16, torch.float32),
                                             (torch.bfloat16, torch.bfloat16),
                                             (torch.float16, torch.float16)])
def test_low_precision_error_within_twice_torch(x_dtype, b_dtype):
    # (bf16, fp32): the fc1 matmul output under autocast with the fp32 bias parameter.
    shape = (4, 6, 48)
    x, b = make_inputs(shape, x_dtype, b_dtype)
    g = torch.randn(shape, dtype=torch.float64)
    out, (gx, gb) = run(triton, x, b, g)
    t_out, (t_gx, t_gb) = run(bias_gelu_torch, x, b, g)
    r_out, (r_gx, r_gb) = run(reference, x, b, g, cast=torch.float64)
    assert out.dtype == gx.dtype == x_dtype and gb.dtype == b_dtype
    assert_low_precision_close(out, t_out, r_out, 1e-6, "out")
    assert_low_precision_close(gx, t_gx, r_gx, 1e-6, "grad x")
    assert_low_precision_close(gb, t_gb, r_gb, 1e-5, "grad bias")


def test_saves_the_input_not_the_output():
    x, b = make_inputs((3, 16))
    x.requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = bias_gelu(x, b.requires_grad_(), kernels="triton")
    assert len(saved) == 2 and saved[0] is x and saved[1] is b
    assert not any(s.data_ptr() == out.data_ptr() for s in saved)


def test_strided_input():
    wide = 2.0 * torch.randn(3, 4, 80)
    x, b = wide[..., ::2], torch.randn(40)
    g = torch.randn(3, 4, 40, dtype=torch.float64)
    out, (gx, gb) = run(triton, x, b, g)
    r_out, (r_gx, r_gb) = run(reference, x, b, g, cast=torch.float64)
    torch.testing.assert_close(out.double(), r_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx.double(), r_gx, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("x,bias,match", [
    (torch.randn(2, 8), torch.randn(7), r"bias \(N,\)"),
    (torch.randn(2, 8), torch.randn(1, 8), r"bias \(N,\)"),
    (torch.ones(2, 8, dtype=torch.int32), torch.randn(8), "fp32, bf16 or fp16"),
    (torch.randn(2, 8, dtype=torch.float64), torch.randn(8, dtype=torch.float64), "fp32, bf16 or fp16"),
])
def test_bad_inputs_raise(x, bias, match):
    with pytest.raises(ValueError, match=match):
        bias_gelu(x, bias, kernels="triton")


def test_triton_without_cuda_or_interpreter_raises(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendUnavailable, match="--kernels triton cannot run"):
        bias_gelu(torch.randn(2, 8), torch.randn(8), kernels="triton")


@pytest.mark.gpu
def test_compiled_vit_b_mlp_shapes_bf16():
    require_compiled()
    shape = (64, 50, 3072)  # ViT-B/16 encoder fc1 output at batch 64
    x, b = make_inputs(shape, torch.bfloat16, torch.float32)
    x, b = x.cuda(), b.cuda()
    g = torch.randn(shape, device="cuda", dtype=torch.float64)
    out, (gx, gb) = run(triton, x, b, g)
    t_out, (t_gx, t_gb) = run(bias_gelu_torch, x, b, g)
    r_out, (r_gx, r_gb) = run(reference, x, b, g, cast=torch.float64)
    assert_low_precision_close(out.cpu(), t_out.cpu(), r_out.cpu(), 1e-6, "out")
    assert_low_precision_close(gx.cpu(), t_gx.cpu(), r_gx.cpu(), 1e-6, "grad x")
    assert_low_precision_close(gb.cpu(), t_gb.cpu(), r_gb.cpu(), 1e-3, "grad bias")


def test_counting_calls_does_not_recompile_a_compiled_caller():
    # dynamo guards on the Python values traced code mutates: a call counter bumped inside a
    # compiled function would recompile it on every call (and past the limit, run it eagerly)
    from fastmae.ops import dispatch
    torch._dynamo.reset()
    f = torch.compile(lambda x, b: bias_gelu(x, b, "torch"), backend="eager")
    x, b = torch.randn(4, 8), torch.randn(8)
    key = f"{OP}:torch"
    before = dispatch.calls[key]
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(3):
            torch.testing.assert_close(f(x, b), bias_gelu_torch(x, b))
    assert dispatch.calls[key] == before  # not counted inside the graph
    bias_gelu(x, b, "torch")
    assert dispatch.calls[key] == before + 1  # counted eagerly
