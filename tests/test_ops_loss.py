"""masked_pixel_loss: the Triton kernel (interpreted on CPU here), loss and the gradient it
writes in the forward pass, against the torch implementation and an fp64 reference."""
import pytest
import torch

from fastmae.settings import BackendUnavailable
from fastmae.kernels import loss as loss_kernels
from fastmae.ops import masked_pixel_loss
from fastmae.ops.loss import OP, masked_pixel_loss_torch
from tests.kernel_checks import (CallCounter, assert_low_precision_close, patches_reference,
                                 require_compiled)

# (B, C, H, W, p): p=14 and 16, H != W, one and three channels, p*p*C never a power of two
# except for (16, C=1).
SHAPES = [(1, 3, 28, 42, 14), (2, 1, 32, 16, 16), (2, 3, 8, 12, 4)]


def reference_loss(pred, imgs, mask, p, norm_pix_loss):
    """fp64, from the patch-by-patch reference (independent of patchify's einsum)."""
    target = patches_reference(imgs, p)
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True, unbiased=True)
        target = (target - mean) / torch.sqrt(var + 1e-6)
    per_patch = ((pred.double() - target) ** 2).mean(dim=-1)
    mask = mask.double()
    return (per_patch * mask).sum() / mask.sum().clamp(min=1.0)


def make_inputs(B, C, H, W, p, dtype=torch.float32, ratio=0.75):
    L = (H // p) * (W // p)
    imgs = torch.randn(B, C, H, W).to(dtype)
    pred = torch.randn(B, L, p * p * C).to(dtype).requires_grad_()
    len_keep = int(L * (1 - ratio))
    mask = (torch.rand(B, L).argsort(1).argsort(1) >= len_keep).float()
    return pred, imgs, mask


def loss_and_grad(fn, pred, imgs, mask, p, norm):
    leaf = pred.detach().requires_grad_()
    loss = fn(leaf, imgs, mask, p, norm)
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss, grad


def triton_loss(*args):
    return masked_pixel_loss(*args, kernels="triton")


@pytest.mark.parametrize("norm", [False, True])
@pytest.mark.parametrize("B,C,H,W,p", SHAPES)
def test_fp32_matches_torch_and_fp64(B, C, H, W, p, norm):
    pred, imgs, mask = make_inputs(B, C, H, W, p)
    with CallCounter(OP) as calls:
        loss, grad = loss_and_grad(triton_loss, pred, imgs, mask, p, norm)
    assert calls.ran("triton") == 1
    assert loss.dtype == torch.float32 and loss.ndim == 0
    t_loss, t_grad = loss_and_grad(masked_pixel_loss_torch, pred, imgs, mask, p, norm)
    r_loss, r_grad = loss_and_grad(reference_loss, pred.double(), imgs, mask, p, norm)
    torch.testing.assert_close(loss, t_loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(loss.double(), r_loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad, t_grad, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(grad.double(), r_grad, rtol=1e-5, atol=1e-8)
    assert torch.all(grad[mask == 0] == 0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("norm", [False, True])
def test_low_precision_error_within_twice_torch(dtype, norm):
    pred, imgs, mask = make_inputs(2, 3, 28, 42, 14, dtype)
    loss, grad = loss_and_grad(triton_loss, pred, imgs, mask, 14, norm)
    t_loss, t_grad = loss_and_grad(masked_pixel_loss_torch, pred, imgs, mask, 14, norm)
    r_loss, r_grad = loss_and_grad(reference_loss, pred.double(), imgs, mask, 14, norm)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    assert_low_precision_close(loss, t_loss, r_loss, 1e-6, "loss")
    assert_low_precision_close(grad, t_grad, r_grad, 1e-7, "grad")


def test_grad_buffer_fully_written_and_backward_scales_it():
    pred, imgs, mask = make_inputs(2, 3, 8, 12, 4)
    buf = torch.full(pred.shape, float("nan"))
    loss, g, denom = loss_kernels.masked_pixel_loss_fwd(pred.detach(), imgs, mask, 4, True, grad=buf)
    assert g is buf and not torch.isnan(buf).any()
    t_loss, t_grad = loss_and_grad(masked_pixel_loss_torch, pred, imgs, mask, 4, True)
    # the forward writes the unscaled 2 m (pred - t); the full gradient is that / (P * denom)
    assert denom.item() == mask.sum().item()
    torch.testing.assert_close(buf / (48 * denom), t_grad, rtol=1e-5, atol=1e-8)
    out = torch.full(pred.shape, float("nan"))
    out = loss_kernels.masked_pixel_loss_bwd(buf, torch.tensor(2.0), denom, torch.float32)
    torch.testing.assert_close(out, 2.0 * t_grad, rtol=1e-5, atol=1e-8)
    # backward multiplies by the incoming gradient
    leaf = pred.detach().requires_grad_()
    (3.5 * masked_pixel_loss(leaf, imgs, mask, 4, True, kernels="triton")).backward()
    torch.testing.assert_close(leaf.grad, 3.5 * t_grad, rtol=1e-5, atol=1e-8)


def fp16_ulp(t: torch.Tensor) -> torch.Tensor:
    """The spacing of fp16 numbers at each |t| (11 significant bits; subnormal spacing 2**-24)."""
    _, exponent = torch.frexp(t.double().abs().clamp(min=2.0**-14))
    return torch.ldexp(torch.ones_like(t, dtype=torch.float64), exponent - 11)


@pytest.mark.parametrize("denom", [3072.0, 37632.0])  # 3/4 of 16 and of 256 ViT-B/16 images
def test_fp16_backward_at_realistic_denominators_and_a_65536_loss_scale(denom):
    # The full gradient 2 m (pred - t) / (P * denom) is ~1e-7 here: a subnormal in fp16.
    # The kernel keeps g = 2 m (pred - t) in fp32 and applies GradScaler's 65536 and
    # 1/(P * denom) in fp32 before its one rounding: within 1 fp16 ulp of the exact value.
    P, scale = 768, 65536.0
    g = torch.randn(3, 5, P) * 2.0
    g[0, 1] = 0.0  # a visible patch
    out = torch.full(g.shape, float("nan"), dtype=torch.float16)
    out = loss_kernels.masked_pixel_loss_bwd(g, torch.tensor(scale), torch.tensor([denom]), torch.float16)
    exact = g.double() * scale / (P * denom)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert torch.all(out[0, 1] == 0) and (out[g != 0] != 0).all()
    assert bool(((out.double() - exact).abs() <= fp16_ulp(exact)).all())
    # The old scheme, the full gradient rounded to fp16 before the scale, fails this:
    old = (g.double() / (P * denom)).half().double() * scale
    assert not bool(((old - exact).abs() <= fp16_ulp(exact)).all())


@pytest.mark.slow
def test_fp16_loss_gradient_with_thousands_of_masked_patches():
    # End to end: 2 images of 2x32x32 in 1x1 patches, 3/4 removed = 1,536 masked patches,
    # GradScaler's 65536 on the loss; the fp16 gradient vs fp64, as good as torch's fp32 path.
    B, C, H, W, p, scale = 2, 2, 32, 32, 1, 65536.0
    pred, imgs, mask = make_inputs(B, C, H, W, p, torch.float16)
    assert mask.sum().item() == 1536
    leaf = pred.detach().requires_grad_()
    (masked_pixel_loss(leaf, imgs, mask, p, True, kernels="triton") * scale).backward()
    t_leaf = pred.detach().requires_grad_()
    (masked_pixel_loss_torch(t_leaf, imgs, mask, p, True) * scale).backward()
    _, r_grad = loss_and_grad(reference_loss, pred.double(), imgs, mask, p, True)
    assert leaf.grad.dtype == torch.float16 and torch.isfinite(leaf.grad).all()
    removed = mask.bool()
    assert (leaf.grad[removed] != 0).all() and torch.all(leaf.grad[~removed] == 0)
    assert_low_precision_close(leaf.grad, t_leaf.grad, r_grad * scale, 1e-6, "scaled fp16 grad")


def test_fractional_bool_and_empty_masks():
    pred, imgs, _ = make_inputs(2, 1, 16, 24, 8)
    B, L = pred.shape[:2]
    weights = torch.rand(B, L)
    weights[0, 0] = 0.0
    for mask in (weights, weights > 0.5, torch.zeros(B, L)):
        loss, grad = loss_and_grad(triton_loss, pred, imgs, mask, 8, False)
        t_loss, t_grad = loss_and_grad(masked_pixel_loss_torch, pred, imgs, mask, 8, False)
        r_loss, _ = loss_and_grad(reference_loss, pred.double(), imgs, mask, 8, False)
        torch.testing.assert_close(loss, t_loss, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(loss.double(), r_loss, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(grad, t_grad, rtol=1e-5, atol=1e-8)
    assert loss.item() == 0.0 and torch.all(grad == 0)  # no removed patch: 0, not 0/0


def test_strided_pred_and_no_grad_path():
    # The model passes pred = decoder_out[:, 1:, :], a non-contiguous view.
    p, C = 4, 3
    full = torch.randn(2, 7, p * p * C)
    pred = full[:, 1:, :]
    imgs = torch.randn(2, C, 8, 12)
    mask = (torch.rand(2, 6) > 0.4).float()
    expected = masked_pixel_loss_torch(pred, imgs, mask, p, True)
    loss = masked_pixel_loss(pred, imgs, mask, p, True, kernels="triton")  # no grad needed
    assert not loss.requires_grad
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-7)
    _, grad, _ = loss_kernels.masked_pixel_loss_fwd(pred, imgs, mask, p, True, write_grad=False)
    assert grad is None
    with torch.no_grad():  # evaluation of a leaf that requires grad: nothing to write
        loss = masked_pixel_loss(pred.clone().requires_grad_(), imgs, mask, p, True, kernels="triton")
    assert not loss.requires_grad
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("pred_shape,mask_shape,img_shape,p,norm,match", [
    ((2, 6, 48), (2, 5), (2, 3, 8, 12), 4, False, r"mask \(B, L\)"),
    ((2, 6, 47), (2, 6), (2, 3, 8, 12), 4, False, "give patches of shape"),
    ((2, 5, 48), (2, 5), (2, 3, 8, 12), 4, False, "give patches of shape"),
    ((2, 6, 48), (2, 6), (2, 3, 8, 10), 4, False, "not a multiple of the patch size"),
    ((1, 4, 1), (1, 4), (1, 1, 2, 2), 1, True, "at least 2 values"),
])
def test_bad_inputs_raise(pred_shape, mask_shape, img_shape, p, norm, match):
    with pytest.raises(ValueError, match=match):
        masked_pixel_loss(torch.randn(pred_shape), torch.randn(img_shape), torch.ones(mask_shape),
                          p, norm, kernels="triton")


def test_integer_inputs_raise():
    with pytest.raises(ValueError, match="floating-point"):
        masked_pixel_loss(torch.ones(1, 4, 4, dtype=torch.int64), torch.randn(1, 1, 4, 4),
                          torch.ones(1, 4), 2, kernels="triton")


def test_triton_without_cuda_or_interpreter_raises(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    pred, imgs, mask = make_inputs(1, 1, 8, 8, 4)
    with pytest.raises(BackendUnavailable, match="--kernels triton cannot run"):
        masked_pixel_loss(pred, imgs, mask, 4, kernels="triton")


@pytest.mark.gpu
@pytest.mark.parametrize("norm", [False, True])
def test_loss_compiled_vit_b_bf16(norm):
    require_compiled()
    B, L, p = 64, 196, 16
    imgs = torch.randn(B, 3, 224, 224, device="cuda", dtype=torch.bfloat16)
    pred = torch.randn(B, L, p * p * 3, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    mask = (torch.rand(B, L, device="cuda").argsort(1).argsort(1) >= 49).float()
    loss, grad = loss_and_grad(triton_loss, pred, imgs, mask, p, norm)
    t_loss, t_grad = loss_and_grad(masked_pixel_loss_torch, pred, imgs, mask, p, norm)
    r_loss, r_grad = loss_and_grad(reference_loss, pred.detach().cpu().double(), imgs.cpu(),
                                   mask.cpu(), p, norm)
    assert_low_precision_close(loss.cpu(), t_loss.cpu(), r_loss, 1e-6, "loss")
    assert_low_precision_close(grad.cpu(), t_grad.cpu(), r_grad, 1e-9, "grad")


def test_patch_larger_than_the_kernel_block_raises(monkeypatch):
    monkeypatch.setattr(loss_kernels, "MAX_BLOCK", 32)
    pred, imgs, mask = make_inputs(1, 3, 8, 8, 4)
    with pytest.raises(ValueError, match="patches of 48 values are larger than this kernel handles"):
        masked_pixel_loss(pred, imgs, mask, 4, kernels="triton")
