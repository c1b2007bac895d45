"""fastmae.apply_to: an existing MAE model patched in place computes the same loss,
predictions and gradients, and really runs fastmae's ops and attention."""
import copy

import pytest
import torch

import fastmae
from fastmae import reference
from fastmae.apply import apply_to
from fastmae.settings import BackendUnavailable, ConfigError
from fastmae.models import attention as attn_backends
from fastmae.ops import dispatch
from tests import helpers
from tests.apply_checks import OPS, AttentionSpy, assert_same, op_calls, run_and_grads
from tests.helpers import TINY, assert_close, hf_lib, randomize


def tiny_hf(**overrides):
    return helpers.tiny_hf(**{"layer_norm_eps": 1e-6, **overrides})


@pytest.mark.parametrize("overrides,attn", [({}, "auto"), ({"norm_pix_loss": True}, "math")])
def test_official_structure(monkeypatch, overrides, attn):
    model = randomize(reference.MaskedAutoencoderViT(**TINY, **overrides))
    imgs, noise = torch.randn(3, 3, 32, 32), torch.rand(3, 16)
    step = lambda: (*model(imgs, 0.75, noise), model)  # noqa: E731
    before = run_and_grads(step)
    spy = AttentionSpy(monkeypatch)
    assert apply_to(model, attn=attn) is model
    calls = op_calls(imgs)
    after = run_and_grads(step)
    assert_same(before, after)
    assert all(op_calls(imgs)[op] == calls[op] + 1 for op in OPS), dispatch.calls
    assert len(spy.backends) == TINY["depth"] + TINY["decoder_depth"]
    assert set(spy.backends) == {"sdpa" if attn == "auto" else "math"}
    info = model._fastmae_applied
    assert info["model"] == "official-mae" and info["attn"] == attn and "forward_encoder" in info["patched"]
    assert "blocks.1.attn.forward" in info["patched"]
    # without noise the masks still come from torch.rand on the same generator
    clean = reference.MaskedAutoencoderViT(**TINY, **overrides)
    clean.load_state_dict(model.state_dict())
    torch.manual_seed(5)
    m_fast = model(imgs)[2]
    torch.manual_seed(5)
    assert torch.equal(m_fast, clean(imgs)[2])


def test_hf_pretraining(monkeypatch):
    hf = tiny_hf(norm_pix_loss=True)
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)

    def step():
        out = hf(imgs, noise=noise)
        return out.loss, out.logits, out.mask, hf
    before = run_and_grads(step)
    ref_tuple = hf(imgs, noise=noise, return_dict=False)
    ref_hidden = hf(imgs, noise=noise, output_hidden_states=True).hidden_states
    spy = AttentionSpy(monkeypatch)
    apply_to(hf)
    calls = op_calls(imgs)
    after = run_and_grads(step)
    assert_same(before, after)
    assert all(op_calls(imgs)[op] == calls[op] + 1 for op in OPS), dispatch.calls
    assert len(spy.backends) == 3
    out = hf(imgs, noise=noise)
    assert type(out).__name__ == "ViTMAEForPreTrainingOutput"
    assert out.ids_restore.shape == (2, 16)
    tup = hf(imgs, noise=noise, return_dict=False)
    assert isinstance(tup, tuple) and len(tup) == len(ref_tuple)
    for a, b in zip(tup, ref_tuple):
        assert_close(a.detach().float(), b.detach().float(), what="tuple output")
    hidden = hf(imgs, noise=noise, output_hidden_states=True).hidden_states
    assert len(hidden) == len(ref_hidden)
    for a, b in zip(hidden, ref_hidden):
        assert_close(a, b, what="hidden state")
    assert hf._fastmae_applied["model"] == "hf-vitmae-pretraining"
    assert hf._fastmae_applied["layout"] == "transformers-5"
    assert "vit.layers.0.attention.forward" in hf._fastmae_applied["patched"]
    # a copy keeps working on its own weights
    twin = copy.deepcopy(hf)
    with torch.no_grad():
        twin.decoder.decoder_pred.bias.add_(1.0)
    assert not torch.allclose(twin(imgs, noise=noise).logits, hf(imgs, noise=noise).logits)


def test_hf_interpolate_pos_encoding():
    hf = tiny_hf()
    imgs, noise = torch.randn(2, 3, 48, 48), torch.rand(2, 36)
    with torch.no_grad():
        before = hf(imgs, noise=noise, interpolate_pos_encoding=True)
        apply_to(hf, kernels="torch", attn="math")
        after = hf(imgs, noise=noise, interpolate_pos_encoding=True)
    assert torch.equal(before.mask, after.mask)
    assert_close(after.logits, before.logits, what="logits")
    assert_close(after.loss, before.loss, what="loss")


def test_hf_encoder_model():
    vit = randomize(hf_lib().ViTMAEModel(tiny_hf().config))
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        before = vit(imgs, noise=noise).last_hidden_state
        apply_to(vit)
        after = vit(imgs, noise=noise).last_hidden_state
    assert_close(after, before, what="last_hidden_state")
    assert vit._fastmae_applied["model"] == "hf-vitmae"


def test_fastmae_model_settings():
    model = fastmae.MaskedAutoencoderViT(**TINY)
    apply_to(model, kernels="torch", attn="math")
    assert model.kernels == "torch" and model.attn_backend == "math"
    assert model.decoder_blocks[0].attn.backend == "math"
    assert model._fastmae_applied["model"] == "fastmae"


def test_unsupported_hf_features_raise():
    hf = apply_to(tiny_hf())
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with pytest.raises(ConfigError, match="output_attentions"):
        hf(imgs, noise=noise, output_attentions=True)
    with pytest.raises(ConfigError, match="gradient with respect to the input images"):
        hf(imgs.clone().requires_grad_(), noise=noise)
    drop = apply_to(tiny_hf(attention_probs_dropout_prob=0.1)).train()
    with pytest.raises(ConfigError, match="attention_probs_dropout_prob"):
        drop(imgs, noise=noise)


def test_bad_models_and_arguments():
    ref = apply_to(reference.MaskedAutoencoderViT(**TINY))
    with pytest.raises(ConfigError, match="gradient with respect to the input images"):
        ref(torch.randn(1, 3, 32, 32, requires_grad=True))
    with pytest.raises(ValueError, match="do not give the model's 16 patches"):
        ref(torch.randn(1, 3, 40, 40))
    with pytest.raises(ConfigError, match="does not know .*Linear"):
        apply_to(torch.nn.Linear(3, 3))
    with pytest.raises(ConfigError, match="unknown kernels"):
        apply_to(reference.MaskedAutoencoderViT(**TINY), kernels="cuda")
    if not attn_backends.flash_available():
        with pytest.raises(BackendUnavailable, match="flash-attn"):
            apply_to(reference.MaskedAutoencoderViT(**TINY), attn="flash")


def _gpu_model(kind):
    if kind == "hf":
        return tiny_hf(hidden_size=128, num_attention_heads=2, intermediate_size=256,
                       decoder_hidden_size=64, decoder_num_attention_heads=1,
                       decoder_intermediate_size=128, image_size=64, patch_size=16).cuda()
    return randomize(reference.MaskedAutoencoderViT(
        img_size=64, patch_size=16, embed_dim=128, depth=2, num_heads=2, decoder_embed_dim=64,
        decoder_depth=1, decoder_num_heads=1, mlp_ratio=2.0)).cuda()


def _forward(model, kind, imgs, noise):
    if kind == "hf":
        out = model(imgs, noise=noise)
        return out.loss, out.logits
    loss, pred, _ = model(imgs, 0.75, noise)
    return loss, pred


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["hf", "official"])
def test_apply_on_gpu(kind, monkeypatch):
    """On CUDA the Triton kernels run; fp32 matches the unpatched model, and under bf16
    autocast the patched model is no further from an fp64 reference than the original."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    model = _gpu_model(kind)
    imgs, noise = torch.randn(8, 3, 64, 64, device="cuda"), torch.rand(8, 16, device="cuda")
    ref64 = copy.deepcopy(model).double()
    with torch.no_grad():
        loss64, pred64 = _forward(ref64, kind, imgs.double(), noise)
        loss32, pred32 = _forward(model, kind, imgs, noise)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, pred_bf = _forward(model, kind, imgs, noise)
        apply_to(model, kernels="triton")
        calls = op_calls(imgs, "triton")
        loss32f, pred32f = _forward(model, kind, imgs, noise)
        assert all(op_calls(imgs, "triton")[op] == calls[op] + 1 for op in OPS), dispatch.calls
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, pred_bf_f = _forward(model, kind, imgs, noise)
    assert_close(pred32f, pred32, rtol=1e-4, atol=1e-5, what="fp32 pred")
    assert_close(loss32f, loss32, rtol=1e-4, atol=1e-6, what="fp32 loss")
    err = (pred_bf.double() - pred64).abs().max().item()
    err_fast = (pred_bf_f.double() - pred64).abs().max().item()
    assert not torch.isnan(pred_bf_f).any()
    assert err_fast <= 2 * err + 1e-3, (err_fast, err)
