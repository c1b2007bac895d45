"""Attention backends: SDPA and explicit softmax against an fp64 reference, backend
resolution, and the errors for a flash backend that cannot run."""
import pytest
import torch

import fastmae
from fastmae.settings import BackendUnavailable, ConfigError
from fastmae.models import attention
from fastmae.models.vit import Block
from tests.helpers import TINY


def reference_attention(qkv, num_heads):
    """fp64 softmax(q k^T / sqrt(hd)) v, written out per head."""
    B, N, three_d = qkv.shape
    hd = three_d // (3 * num_heads)
    q, k, v = qkv.double().reshape(B, N, 3, num_heads, hd).unbind(2)  # (B, N, H, hd)
    scores = torch.einsum("bnhd,bmhd->bhnm", q, k) / hd**0.5
    probs = torch.exp(scores - scores.amax(-1, keepdim=True))
    probs = probs / probs.sum(-1, keepdim=True)
    return torch.einsum("bhnm,bmhd->bnhd", probs, v).reshape(B, N, num_heads * hd)


@pytest.mark.parametrize("B,N,H,hd", [(2, 7, 3, 8), (1, 50, 2, 16)])
def test_sdpa_and_math_match_fp64(B, N, H, hd):
    qkv = torch.randn(B, N, 3 * H * hd)
    g = torch.randn(B, N, H * hd)
    ref_in = qkv.double().requires_grad_()
    ref = reference_attention(ref_in, H)
    (ref_grad,) = torch.autograd.grad(ref, ref_in, g.double())
    for backend in ("sdpa", "math"):
        x = qkv.clone().requires_grad_()
        out = attention.attention(x, H, backend)
        (grad,) = torch.autograd.grad(out, x, g)
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6, msg=backend)
        torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-5, msg=backend)


def test_auto_resolves_to_sdpa_on_cpu():
    for dtype in (torch.float32, torch.bfloat16):
        assert attention.resolve("auto", torch.randn(1, 4, 24).to(dtype), num_heads=2) == "sdpa"
    assert attention.resolve("math", torch.randn(1, 4, 24)) == "math"


def test_flash_without_flash_attn_raises(monkeypatch):
    monkeypatch.setattr(attention, "_FLASH", None)
    monkeypatch.setattr(attention, "_FLASH_MISSING", "the flash-attn package is not installed")
    assert not attention.flash_available()
    with pytest.raises(BackendUnavailable, match="--attn flash was asked for but the flash-attn "
                                                 r"package is not installed \(pip install flash-attn"):
        attention.check_backend("flash")
    with pytest.raises(BackendUnavailable, match="flash-attn package is not installed"):
        Block(16, 2, attn="flash")
    with pytest.raises(BackendUnavailable, match="flash-attn package is not installed"):
        fastmae.MaskedAutoencoderViT(**TINY, attn="flash")
    assert attention.resolve("auto", torch.randn(1, 4, 24), num_heads=2) == "sdpa"


def test_flash_on_cpu_tensors_raises_even_when_installed(monkeypatch):
    fake = attention.FlashEntry("flash-attn", lambda qkv: None, (8, 0), None, None)
    monkeypatch.setattr(attention, "_FLASH", fake)
    assert attention.check_backend("flash") == "flash"
    with pytest.raises(BackendUnavailable, match="needs fp16/bf16 CUDA tensors, got torch.float32 on cpu"):
        attention.resolve("flash", torch.randn(1, 4, 24), num_heads=2)
    assert attention.resolve("auto", torch.randn(1, 4, 24).bfloat16(), num_heads=2) == "sdpa"


def test_flash_entry_capability_and_head_size_limits():
    fa2 = attention.FlashEntry("flash-attn", lambda qkv: None, (8, 0), None, None)
    fa4 = attention.FlashEntry("flash-attn-4", lambda qkv: None, (9, 0), (11, 9), (64, 96, 128))
    assert fa2.supports((8, 0), 32) is None and fa2.supports((9, 0), 256) is None
    assert "compute capability 7.5" in fa2.supports((7, 5), 64)
    assert "head size 320" in fa2.supports((9, 0), 320)
    assert fa4.supports((9, 0), 64) is None and fa4.supports((10, 0), 128) is None
    assert "compute capability 8.0" in fa4.supports((8, 0), 64)
    assert "compute capability 12.0" in fa4.supports((12, 0), 64)
    assert "head size 32" in fa4.supports((9, 0), 32)


def test_bad_backend_names_raise():
    with pytest.raises(ConfigError, match="unknown attention backend 'xformers'"):
        attention.check_backend("xformers")
    with pytest.raises(ConfigError, match="unknown attention backend 'fast'"):
        fastmae.MaskedAutoencoderViT(**TINY, attn="fast")
    with pytest.raises(ConfigError, match="not a resolved backend"):
        attention.attention(torch.randn(1, 4, 24), 2, "auto")


def test_model_math_and_sdpa_agree():
    model = fastmae.MaskedAutoencoderViT(**TINY, attn="sdpa", kernels="torch")
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, model.num_patches)
    loss_sdpa, pred_sdpa, _ = model(imgs, 0.75, noise)
    model.set_attn_backend("math")
    loss_math, pred_math, _ = model(imgs, 0.75, noise)
    torch.testing.assert_close(pred_sdpa, pred_math, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss_sdpa, loss_math, rtol=1e-5, atol=1e-7)


@pytest.mark.gpu
@pytest.mark.parametrize("hd", [32, 64])
def test_flash_matches_sdpa_bf16_on_cuda(hd):
    qkv = torch.randn(4, 197, 3 * 8 * hd, device="cuda", dtype=torch.bfloat16)
    why = attention._flash_unfit(qkv, hd)
    if why is not None:
        pytest.skip(f"flash attention cannot run here: {why}")
    g = torch.randn(4, 197, 8 * hd, device="cuda", dtype=torch.bfloat16)
    outs, grads = {}, {}
    for backend in ("flash", "sdpa"):
        x = qkv.clone().requires_grad_()
        outs[backend] = attention.attention(x, 8, attention.resolve(backend, x, 8))
        (grads[backend],) = torch.autograd.grad(outs[backend], x, g)
    ref_in = qkv.double().requires_grad_()
    ref = reference_attention(ref_in, 8)
    (ref_grad,) = torch.autograd.grad(ref, ref_in, g.double())
    for got, base, r, what in ((outs["flash"], outs["sdpa"], ref, "out"),
                               (grads["flash"], grads["sdpa"], ref_grad, "grad")):
        err = (got.double() - r).abs().max().item()
        base_err = (base.double() - r).abs().max().item()
        assert err <= 2 * base_err + 1e-3, f"{what}: flash error {err:.3g} vs sdpa {base_err:.3g}"
