"""unshuffle_with_mask_token: the Triton kernels (interpreted on CPU here), forward and
backward, against the torch implementation and an fp64 reference."""
import pytest
import torch

from fastmae.settings import BackendUnavailable
from fastmae.kernels import unshuffle as unshuffle_kernels
from fastmae.ops import unshuffle_with_mask_token
from fastmae.ops.unshuffle import OP, unshuffle_with_mask_token_torch
from tests.kernel_checks import CallCounter, assert_low_precision_close, require_compiled

# (B, L, K, D): K and D not powers of two, K = L (nothing masked), K = 0 (only cls visible).
SHAPES = [(2, 6, 3, 20), (1, 9, 2, 33), (3, 4, 4, 8), (2, 5, 0, 12)]


def make_inputs(B, L, K, D, x_dtype=torch.float32, param_dtype=torch.float32, pos_grad=False):
    x = torch.randn(B, 1 + K, D).to(x_dtype).requires_grad_()
    mask_token = torch.randn(1, 1, D).to(param_dtype).requires_grad_()
    pos = torch.randn(1, 1 + L, D).to(param_dtype).requires_grad_(pos_grad)
    ids_restore = torch.rand(B, L).argsort(dim=1).argsort(dim=1)
    return x, mask_token, ids_restore, pos


def run(fn, x, mask_token, ids_restore, pos, grad_out):
    """Output and the gradients of every input that requires one."""
    leaves = [t for t in (x, mask_token, pos) if t.requires_grad]
    out = fn(x, mask_token, ids_restore, pos)
    return out, torch.autograd.grad(out, leaves, grad_out)


def fp64(t):
    return t.detach().double().requires_grad_(t.requires_grad)


@pytest.mark.parametrize("B,L,K,D", SHAPES)
@pytest.mark.parametrize("pos_grad", [False, True])
def test_fp32_matches_torch_and_fp64(B, L, K, D, pos_grad):
    inputs = make_inputs(B, L, K, D, pos_grad=pos_grad)
    g = torch.randn(B, 1 + L, D)
    with CallCounter(OP) as calls:
        out, grads = run(lambda *a: unshuffle_with_mask_token(*a, kernels="triton"), *inputs, g)
    assert calls.ran("triton") == 1
    t_out, t_grads = run(unshuffle_with_mask_token_torch, *inputs, g)
    x, mt, ids, pos = inputs
    r_out, r_grads = run(unshuffle_with_mask_token_torch, fp64(x), fp64(mt), ids, fp64(pos), g.double())
    assert len(grads) == (3 if pos_grad else 2)
    torch.testing.assert_close(out, t_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.double(), r_out, rtol=1e-5, atol=1e-6)
    for a, b, r in zip(grads, t_grads, r_grads):
        assert not torch.isnan(a).any()
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a.double(), r, rtol=1e-5, atol=1e-5)
    if K == L:
        assert torch.equal(grads[1], torch.zeros_like(grads[1]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("param_dtype", ["same", torch.float32])
def test_low_precision_error_within_twice_torch(dtype, param_dtype):
    # param_dtype float32: the autocast case (bf16 activations, fp32 mask token and positions).
    pdt = dtype if param_dtype == "same" else param_dtype
    B, L, K, D = 2, 12, 3, 40
    x, mt, ids, pos = make_inputs(B, L, K, D, dtype, pdt, pos_grad=True)
    out_dtype = torch.promote_types(dtype, pdt)
    g = torch.randn(B, 1 + L, D).to(out_dtype)
    out, grads = run(lambda *a: unshuffle_with_mask_token(*a, kernels="triton"), x, mt, ids, pos, g)
    t_out, t_grads = run(unshuffle_with_mask_token_torch, x, mt, ids, pos, g)
    r_out, r_grads = run(unshuffle_with_mask_token_torch, fp64(x), fp64(mt), ids, fp64(pos), g.double())
    assert out.dtype == t_out.dtype == out_dtype
    assert_low_precision_close(out, t_out, r_out, 1e-6, "out")
    for name, a, b, r in zip(("x", "mask_token", "pos_embed"), grads, t_grads, r_grads):
        assert a.dtype == b.dtype, name
        assert_low_precision_close(a, b, r, 1e-6, f"grad {name}")


def test_every_element_of_out_and_grad_x_is_written():
    B, L, K, D = 2, 7, 3, 24
    x, mt, ids, pos = make_inputs(B, L, K, D)
    out = torch.full((B, 1 + L, D), float("nan"))
    unshuffle_kernels.unshuffle_fwd(x.detach(), mt.detach(), ids, pos.detach(), out=out)
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out, unshuffle_with_mask_token_torch(x, mt, ids, pos), rtol=0, atol=0)
    g = torch.randn(B, 1 + L, D)
    gx = torch.full((B, 1 + K, D), float("nan"))
    _, gm = unshuffle_kernels.unshuffle_bwd(g, ids, K, torch.float32, grad_x=gx)
    assert not torch.isnan(gx).any()
    t_gx, t_gm = torch.autograd.grad(unshuffle_with_mask_token_torch(x, mt, ids, pos), (x, mt), g)
    assert torch.equal(gx, t_gx)
    torch.testing.assert_close(gm, t_gm.view(-1), rtol=1e-5, atol=1e-6)


def test_strided_inputs():
    # grad_out and x as non-contiguous views (x the slice of a wider tensor).
    B, L, K, D = 2, 6, 2, 16
    wide = torch.randn(B, 1 + K, 2 * D)
    x = wide[..., ::2].requires_grad_()
    mt = torch.randn(1, 1, D, requires_grad=True)
    pos = torch.randn(1, 1 + L, D)
    ids = torch.rand(B, L).argsort(1).argsort(1)
    g = torch.randn(B, D, 1 + L).transpose(1, 2)
    out, grads = run(lambda *a: unshuffle_with_mask_token(*a, kernels="triton"), x, mt, ids, pos, g)
    t_out, t_grads = run(unshuffle_with_mask_token_torch, x, mt, ids, pos, g)
    assert torch.equal(out, t_out)
    for a, b in zip(grads, t_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("change,match", [
    (dict(x=torch.randn(2, 3, 9)), "shapes do not agree"),
    (dict(mask_token=torch.randn(1, 2, 8)), "shapes do not agree"),
    (dict(pos_embed=torch.randn(1, 5, 8)), "shapes do not agree"),
    (dict(ids_restore=torch.zeros(2, 5, dtype=torch.int64)), "permutation of 0..L-1"),
    (dict(ids_restore=torch.rand(2, 5)), "int64 or int32"),
    (dict(x=torch.randn(3, 8)), r"x \(B, 1\+K, D\)"),
    (dict(x=torch.randn(2, 7, 8)), "shapes do not agree"),  # more visible tokens than patches
])
def test_bad_inputs_raise(change, match):
    args = dict(x=torch.randn(2, 3, 8), mask_token=torch.randn(1, 1, 8),
                ids_restore=torch.rand(2, 5).argsort(1), pos_embed=torch.randn(1, 6, 8))
    args.update(change)
    with pytest.raises(ValueError, match=match):
        unshuffle_with_mask_token(**args, kernels="triton")


def test_triton_without_cuda_or_interpreter_raises(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x, mt, ids, pos = make_inputs(1, 4, 2, 8)
    with pytest.raises(BackendUnavailable, match="set TRITON_INTERPRET=1"):
        unshuffle_with_mask_token(x, mt, ids, pos, kernels="triton")


@pytest.mark.gpu
def test_unshuffle_compiled_vit_b_bf16():
    require_compiled()
    B, L, K, D = 64, 196, 49, 512
    x = torch.randn(B, 1 + K, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    mt = torch.randn(1, 1, D, device="cuda", requires_grad=True)
    pos = torch.randn(1, 1 + L, D, device="cuda")
    ids = torch.rand(B, L, device="cuda").argsort(1).argsort(1)
    g = torch.randn(B, 1 + L, D, device="cuda")
    out, grads = run(lambda *a: unshuffle_with_mask_token(*a, kernels="triton"), x, mt, ids, pos, g)
    t_out, t_grads = run(unshuffle_with_mask_token_torch, x, mt, ids, pos, g)
    r_out, r_grads = run(unshuffle_with_mask_token_torch, fp64(x), fp64(mt), ids, fp64(pos), g.double())
    assert_low_precision_close(out, t_out, r_out, 1e-6, "out")
    for a, b, r in zip(grads, t_grads, r_grads):
        assert_low_precision_close(a, b, r, 1e-4, "grad")


def test_multi_tile_grid(monkeypatch):
    # Tiny tiles so rows, row steps and feature blocks each span several tiles.
    monkeypatch.setattr(unshuffle_kernels, "TILE", 16)
    monkeypatch.setattr(unshuffle_kernels, "MAX_BLOCK_D", 8)
    monkeypatch.setattr(unshuffle_kernels, "MAX_STEPS", 2)
    assert unshuffle_kernels._tiling(9, 20) == (2, 8)
    B, L, K, D = 2, 9, 4, 20
    inputs = make_inputs(B, L, K, D, pos_grad=True)
    g = torch.randn(B, 1 + L, D)
    out, grads = run(lambda *a: unshuffle_with_mask_token(*a, kernels="triton"), *inputs, g)
    t_out, t_grads = run(unshuffle_with_mask_token_torch, *inputs, g)
    torch.testing.assert_close(out, t_out, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads, t_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
