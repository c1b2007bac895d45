"""add_layer_norm: the fused residual add + LayerNorm Triton kernels (interpreted on CPU
here), forward and backward, against an fp64 reference and torch's own LayerNorm."""
import pytest
import torch

from fastmae.kernels import layer_norm as ln_kernels
from fastmae.ops import add_layer_norm, dispatch
from fastmae.ops.layer_norm import OP, add_layer_norm_torch
from fastmae.settings import BackendUnavailable
from tests.kernel_checks import CallCounter, assert_low_precision_close, bf16_ulp, require_compiled

EPS = 1e-6
# (shape, residual?, bias?): N not a power of two, one row, rows not a multiple of the tile.
CASES = [((2, 5, 40), True, True), ((3, 7, 64), False, True), ((1, 1, 20), True, False),
         ((4, 3, 33), False, False), ((37, 24), True, True)]


def nan_empty(*args, **kwargs):
    return torch.empty(*args, **kwargs).fill_(float("nan"))


@pytest.fixture(autouse=True)
def poisoned(monkeypatch):
    """Every buffer the kernels write (outputs, statistics, partial sums) starts as NaN."""
    monkeypatch.setattr(ln_kernels, "empty", nan_empty)


def reference(x, residual, weight, bias, eps=EPS):
    """fp64 LayerNorm written out: biased variance over the last dim, eps inside the sqrt."""
    h = x.double() if residual is None else x.double() + residual.double()
    mean = h.mean(-1, keepdim=True)
    var = ((h - mean) ** 2).mean(-1, keepdim=True)
    y = (h - mean) / torch.sqrt(var + eps) * weight.double()
    return (y + bias.double() if bias is not None else y), h


def make_inputs(shape, residual, bias, x_dtype=torch.float32, res_dtype=None, p_dtype=torch.float32):
    N = shape[-1]
    x = torch.randn(shape).to(x_dtype).requires_grad_()
    r = torch.randn(shape).to(res_dtype or x_dtype).requires_grad_() if residual else None
    w = (1.0 + 0.5 * torch.randn(N)).to(p_dtype).requires_grad_()
    b = (0.5 * torch.randn(N)).to(p_dtype).requires_grad_() if bias else None
    return x, r, w, b


def run(fn, inputs, gy, gh, cast=None):
    """y, new_residual and the gradients of every input, for the loss
    sum(y * gy) + sum(new_residual * gh) (gh None: the new residual is not used)."""
    leaves = [t.detach().to(cast or t.dtype).requires_grad_() if t is not None else None
              for t in inputs]
    y, h = fn(*leaves)
    loss = (y.double() * gy).sum() + ((h.double() * gh).sum() if gh is not None else 0.0)
    loss.backward()
    return y, h, [t.grad for t in leaves if t is not None]


def triton(*args):
    return add_layer_norm(*args, eps=EPS, kernels="triton")


@pytest.mark.parametrize("use_h", [True, False])
@pytest.mark.parametrize("shape,residual,bias", CASES)
def test_fp32_matches_fp64(shape, residual, bias, use_h):
    inputs = make_inputs(shape, residual, bias)
    gy = torch.randn(shape, dtype=torch.float64)
    gh = torch.randn(shape, dtype=torch.float64) if use_h and residual else None
    with CallCounter(OP) as calls:
        y, h, grads = run(triton, inputs, gy, gh)
    assert calls.ran("triton") == 1
    r_y, r_h, r_grads = run(reference, inputs, gy, gh, cast=torch.float64)
    assert y.dtype == h.dtype == torch.float32 and len(grads) == len(r_grads)
    torch.testing.assert_close(y.double(), r_y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h.double(), r_h, rtol=1e-6, atol=1e-6)
    if not residual:
        assert h is inputs[0] or torch.equal(h, inputs[0])
    for name, g, r in zip(("x", "residual", "weight", "bias"), grads, r_grads):
        assert not torch.isnan(g).any(), name
        torch.testing.assert_close(g.double(), r, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("x_dtype,res_dtype", [(torch.bfloat16, torch.bfloat16),
                                               (torch.bfloat16, torch.float32),
                                               (torch.float16, torch.float16)])
def test_low_precision_error_within_twice_torch(x_dtype, res_dtype):
    # (bf16, fp32): a bf16 branch output added to the fp32 residual stream, as in the model.
    shape = (3, 6, 48)
    inputs = make_inputs(shape, True, True, x_dtype, res_dtype)
    gy, gh = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    y, h, grads = run(triton, inputs, gy, gh)
    t_y, t_h, t_grads = run(lambda *a: add_layer_norm_torch(*a, eps=EPS), inputs, gy, gh)
    r_y, r_h, r_grads = run(reference, inputs, gy, gh, cast=torch.float64)
    assert y.dtype == t_y.dtype and h.dtype == t_h.dtype == torch.promote_types(x_dtype, res_dtype)
    if dispatch.interpreting() and h.dtype == torch.bfloat16:  # the interpreter truncates
        assert bool(((h.double() - t_h.double()).abs() <= bf16_ulp(t_h)).all())
    else:
        assert torch.equal(h, t_h)  # the sum is rounded once, like torch's
    assert_low_precision_close(y, t_y, r_y, 1e-6, "y")
    for name, g, t, r in zip(("x", "residual", "weight", "bias"), grads, t_grads, r_grads):
        assert g.dtype == t.dtype, name
        assert_low_precision_close(g, t, r, 1e-5, f"grad {name}")


def test_autocast_writes_the_activation_dtype():
    # Under autocast y comes out in bf16 (torch's LayerNorm would give fp32), statistics and
    # the fp32 residual stream stay fp32.
    x, r, w, b = make_inputs((2, 5, 40), True, True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, h = add_layer_norm(x, r, w, b, EPS, kernels="triton")
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32
    r_y, _ = reference(x, r, w, b)
    assert_low_precision_close(y, r_y.to(torch.bfloat16), r_y, 1e-6, "autocast y")
    y.float().sum().backward()
    assert x.grad.dtype == r.grad.dtype == torch.float32 and not torch.isnan(x.grad).any()


def test_strided_inputs():
    # x and residual as non-contiguous views (every other feature of a wider tensor).
    wide = torch.randn(3, 4, 80)
    x = wide[..., ::2].requires_grad_()
    r = torch.randn(3, 40, 4).transpose(1, 2).requires_grad_()
    w, b = torch.randn(40).requires_grad_(), torch.randn(40).requires_grad_()
    gy = torch.randn(3, 4, 40, dtype=torch.float64)
    y, h, grads = run(triton, (x, r, w, b), gy, gy)
    r_y, r_h, r_grads = run(reference, (x, r, w, b), gy, gy, cast=torch.float64)
    torch.testing.assert_close(y.double(), r_y, rtol=1e-5, atol=1e-5)
    for g, rg in zip(grads, r_grads):
        torch.testing.assert_close(g.double(), rg, rtol=1e-5, atol=1e-5)


def test_statistics_saved_for_backward():
    x, r, w, b = [t.detach() for t in make_inputs((5, 24), True, True)]
    y, h, mean, rstd = ln_kernels.add_layer_norm_fwd(x, r, w, b, EPS, torch.float32)
    hd = x.double() + r.double()
    torch.testing.assert_close(mean.double(), hd.mean(-1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rstd.double(), (hd.var(-1, unbiased=False) + EPS).rsqrt(), rtol=1e-5, atol=0)


@pytest.mark.parametrize("change,match", [
    (dict(weight=torch.randn(7)), r"weight \(N,\)"),
    (dict(bias=torch.randn(7)), "bias must have the weight's shape"),
    (dict(residual=torch.randn(2, 3)), "residual must have x's shape"),
    (dict(x=torch.ones(2, 8, dtype=torch.int64)), "fp32, bf16 or fp16"),
    (dict(x=torch.randn(2, 8, dtype=torch.float64)), "fp32, bf16 or fp16"),
])
def test_bad_inputs_raise(change, match):
    args = dict(x=torch.randn(2, 8), residual=torch.randn(2, 8), weight=torch.randn(8),
                bias=torch.randn(8))
    args.update(change)
    with pytest.raises(ValueError, match=match):
        add_layer_norm(**args, kernels="triton")


def test_rows_wider_than_the_kernel_raise(monkeypatch):
    monkeypatch.setattr(ln_kernels, "MAX_BLOCK_N", 16)
    with pytest.raises(ValueError, match="rows of 20 features are wider than this kernel handles"):
        add_layer_norm(torch.randn(2, 20), None, torch.randn(20), None, kernels="triton")


def test_triton_without_cuda_or_interpreter_raises(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendUnavailable, match="--kernels triton cannot run"):
        add_layer_norm(torch.randn(2, 8), None, torch.randn(8), None, kernels="triton")


@pytest.mark.gpu
def test_compiled_vit_b_shapes_bf16():
    # Encoder rows of ViT-B/16 at batch 64 under bf16 autocast, fp32 residual stream.
    require_compiled()
    shape = (64, 50, 768)
    x, r, w, b = [t.cuda() if t is not None else None
                  for t in make_inputs(shape, True, True, torch.bfloat16, torch.float32)]
    gy = torch.randn(shape, device="cuda", dtype=torch.float64)
    y, h, grads = run(triton, (x, r, w, b), gy, gy)
    t_y, t_h, t_grads = run(lambda *a: add_layer_norm_torch(*a, eps=EPS), (x, r, w, b), gy, gy)
    r_y, r_h, r_grads = run(reference, (x, r, w, b), gy, gy, cast=torch.float64)
    assert_low_precision_close(y.cpu(), t_y.cpu(), r_y.cpu(), 1e-6, "y")
    for name, g, t, rg in zip(("x", "residual", "weight", "bias"), grads, t_grads, r_grads):
        assert_low_precision_close(g.cpu(), t.cpu(), rg.cpu(), 1e-5, f"grad {name}")
