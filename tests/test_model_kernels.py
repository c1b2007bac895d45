"""The whole model with kernels="triton" (interpreted on CPU here) against kernels="torch":
same weights, same noise -> same loss, prediction and gradients."""
import pytest
import torch

import fastmae
from fastmae.settings import BackendUnavailable, ConfigError
from fastmae.ops import dispatch
from tests.helpers import TINY, assert_close, grads, tiny_pair
from tests.kernel_checks import require_compiled

OPS = ("gather_visible_patches", "unshuffle_with_mask_token", "masked_pixel_loss")


def kernel_pair(**overrides):
    fast, _ = tiny_pair(kernels="triton", **overrides)
    plain = fastmae.MaskedAutoencoderViT(**{**TINY, **overrides}, kernels="torch")
    plain.load_state_dict(fast.state_dict(), strict=True)
    return fast, plain


@pytest.mark.parametrize("overrides", [
    {},
    {"norm_pix_loss": True},
    {"in_chans": 1, "img_size": (16, 40)},
    {"patch_size": 14, "img_size": (28, 42), "decoder_embed_dim": 20, "decoder_num_heads": 2},
])
def test_triton_model_matches_torch_model(overrides):
    fast, plain = kernel_pair(**overrides)
    imgs = torch.randn(2, fast.in_chans, *fast.img_size)
    noise = torch.rand(2, fast.num_patches)
    before = dict(dispatch.calls)
    lf, pf, mf = fast(imgs, 0.75, noise)
    for op in OPS:
        assert dispatch.calls[f"{op}:triton"] == before.get(f"{op}:triton", 0) + 1, op
    lp, pp, mp = plain(imgs, 0.75, noise)
    assert torch.equal(mf, mp)
    assert_close(pf, pp, rtol=1e-5, atol=1e-6, what="pred")
    assert_close(lf, lp, rtol=1e-5, atol=1e-7, what="loss")
    lf.backward()
    lp.backward()
    gf, gp = grads(fast), grads(plain)
    assert gf.keys() == gp.keys() and "mask_token" in gf and "patch_embed.proj.weight" in gf
    for name in gp:
        assert_close(gf[name], gp[name], rtol=1e-5, atol=1e-7, what=f"grad {name}")


def test_forward_features_with_triton_gather():
    fast, plain = kernel_pair()
    imgs = torch.randn(2, 3, 32, 32)
    assert_close(fast.forward_features(imgs), plain.forward_features(imgs), what="features")


def test_unknown_kernels_name_raises():
    with pytest.raises(ConfigError, match="unknown kernels 'cuda'"):
        fastmae.MaskedAutoencoderViT(**TINY, kernels="cuda")


def test_triton_model_on_cpu_without_interpreter_raises(monkeypatch):
    fast, _ = kernel_pair()
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendUnavailable, match="--kernels triton cannot run"):
        fast(torch.randn(1, 3, 32, 32))


@pytest.mark.gpu
def test_triton_model_matches_torch_model_on_gpu_bf16_autocast():
    require_compiled()
    fast, plain = kernel_pair(img_size=64, patch_size=16, embed_dim=64, num_heads=4,
                              decoder_embed_dim=32, decoder_num_heads=4)
    fast, plain = fast.cuda(), plain.cuda()
    imgs = torch.randn(8, 3, 64, 64, device="cuda")
    noise = torch.rand(8, fast.num_patches, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        lf, pf, _ = fast(imgs, 0.75, noise)
        lp, pp, _ = plain(imgs, 0.75, noise)
    torch.testing.assert_close(lf, lp, rtol=2e-2, atol=1e-3)
    lf.backward()
    lp.backward()
    for name, g in grads(plain).items():
        torch.testing.assert_close(grads(fast)[name], g, rtol=5e-2, atol=5e-3, msg=name)
