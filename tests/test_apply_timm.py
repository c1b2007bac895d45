"""fastmae.apply_to on the official MAE model as facebookresearch/mae builds it, from
timm's Block and PatchEmbed: same loss, predictions and parameter gradients as the
unpatched model, with fastmae's Triton ops and attention really running."""
import pytest
import torch

pytest.importorskip("timm")

from fastmae.apply import apply_to  # noqa: E402
from fastmae.ops import dispatch  # noqa: E402
from fastmae.settings import ConfigError  # noqa: E402
from tests.apply_checks import AttentionSpy, assert_same, op_calls, ran_once_each, run_and_grads  # noqa: E402
from tests.helpers import TINY, randomize  # noqa: E402
from tests.official_mae import MaskedAutoencoderViT  # noqa: E402


def official(**overrides):
    return randomize(MaskedAutoencoderViT(**{**TINY, **overrides}))


def seeded_step(model, imgs, seed):
    # The official forward takes no noise: both versions draw torch.rand(B, L) once.
    def step():
        torch.manual_seed(seed)
        return (*model(imgs, 0.75), model)
    return step


@pytest.mark.parametrize("overrides,attn", [({}, "auto"), ({"norm_pix_loss": True}, "math")])
def test_timm_official_matches_unpatched(monkeypatch, overrides, attn):
    model = official(**overrides)
    assert type(model.blocks[0]).__module__.startswith("timm.")
    imgs = torch.randn(3, 3, 32, 32)
    step = seeded_step(model, imgs, seed=11)
    before = run_and_grads(step)
    spy = AttentionSpy(monkeypatch)
    assert apply_to(model, attn=attn) is model
    assert dispatch.resolve("auto", imgs) == "triton"  # TRITON_INTERPRET=1 (conftest)
    calls = op_calls(imgs)
    after = run_and_grads(step)
    assert_same(before, after)
    assert ran_once_each(calls, imgs), dispatch.calls
    assert len(spy.backends) == TINY["depth"] + TINY["decoder_depth"]
    assert set(spy.backends) == {"sdpa" if attn == "auto" else "math"}
    info = model._fastmae_applied
    assert info["model"] == "official-mae" and "decoder_blocks.0.attn.forward" in info["patched"]


def test_timm_block_keeps_its_call_convention():
    """timm's Block passes attn_mask=None and is_causal=False; only real values are refused."""
    model = apply_to(official())
    blk = model.blocks[0]
    x = torch.randn(2, 5, TINY["embed_dim"])
    assert blk(x, attn_mask=None, is_causal=False).shape == x.shape
    with pytest.raises(ConfigError, match="attention mask"):
        blk(x, attn_mask=torch.zeros(5, 5))
    with pytest.raises(ConfigError, match="not causal"):
        blk(x, is_causal=True)
    with pytest.raises(ConfigError, match="takes no rope"):
        blk.attn(x, rope=torch.zeros(1))


def test_timm_unsupported_variants_are_refused():
    with pytest.raises(ConfigError, match="q_norm is a LayerNorm"):
        apply_to(official(block_kwargs={"qk_norm": True}))
    with pytest.raises(ConfigError, match="norm is a LayerNorm"):
        apply_to(official(block_kwargs={"scale_attn_norm": True}))
    drop = apply_to(official(block_kwargs={"attn_drop": 0.1})).train()
    with pytest.raises(ConfigError, match="attention dropout p=0.1"):
        drop(torch.randn(1, 3, 32, 32))
    with torch.no_grad():  # in eval mode dropout is off: runs
        assert torch.isfinite(drop.eval()(torch.randn(1, 3, 32, 32))[0])
    with pytest.raises(ValueError, match="do not match the model's img_size"):
        apply_to(official())(torch.randn(1, 3, 40, 40))


@pytest.mark.gpu
def test_timm_official_on_gpu(monkeypatch):
    """On CUDA the compiled Triton kernels run inside the timm-built model; fp32 matches."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    model = randomize(MaskedAutoencoderViT(img_size=64, patch_size=16, embed_dim=128, depth=2,
                                           num_heads=2, decoder_embed_dim=64, decoder_depth=1,
                                           decoder_num_heads=1, mlp_ratio=2.0)).cuda()
    imgs = torch.randn(8, 3, 64, 64, device="cuda")
    step = seeded_step(model, imgs, seed=3)
    before = run_and_grads(step)
    apply_to(model, kernels="triton")
    calls = op_calls(imgs, "triton")
    after = run_and_grads(step)
    assert ran_once_each(calls, imgs, "triton"), dispatch.calls
    (l0, p0, m0, g0), (l1, p1, m1, g1) = before, after
    assert torch.equal(m0, m1)
    torch.testing.assert_close(p1, p0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(l1, l0, rtol=1e-4, atol=1e-6)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-3, atol=1e-5, msg=name)
