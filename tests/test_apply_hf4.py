"""fastmae.apply_to on the transformers 4.x ViTMAE layout (query/key/value inside
attention.attention, attention.output.dense, a forward_loss method), built from close
copies of the 4.x modules while transformers 5 is installed: tests/hf4_vitmae.py (4.5x)
and tests/hf4_legacy_vitmae.py (the 4.40-4.47 call convention)."""
import copy

import pytest
import torch

pytest.importorskip("transformers")

import fastmae  # noqa: E402
from fastmae.apply import apply_to  # noqa: E402
from fastmae.interop.hf import hf_to_official, model_config_from_hf, naming, official_to_hf  # noqa: E402
from fastmae.ops import dispatch  # noqa: E402
from fastmae.settings import ConfigError  # noqa: E402
from tests import hf4_legacy_vitmae, hf4_vitmae  # noqa: E402
from tests.apply_checks import AttentionSpy, assert_same, op_calls, ran_once_each, run_and_grads  # noqa: E402
from tests.helpers import assert_close, randomize, tiny_hf  # noqa: E402


GENERATIONS = {"4.5x": hf4_vitmae, "4.4x": hf4_legacy_vitmae}


def hf4_from(hf5, sdpa_class=False, generation="4.5x"):
    """A 4.x-layout model with the weights of a transformers 5 model."""
    cfg = copy.deepcopy(hf5.config)
    cfg._hf4_sdpa_class = sdpa_class
    hf4 = GENERATIONS[generation].ViTMAEForPreTraining(cfg)
    hf4.load_state_dict(official_to_hf(hf_to_official(hf5.state_dict()), "legacy"), strict=True)
    return hf4


def small_hf5(**overrides):
    return tiny_hf(**{"layer_norm_eps": 1e-6, **overrides})


@pytest.mark.parametrize("generation", list(GENERATIONS))
def test_the_copy_is_the_4x_layout_and_computes_what_5x_does(generation):
    hf5 = small_hf5()
    hf4 = hf4_from(hf5, generation=generation)
    sd = hf4.state_dict()
    assert naming(sd) == "legacy"
    assert "vit.encoder.layer.1.attention.attention.query.weight" in sd
    assert "decoder.decoder_layers.0.attention.output.dense.bias" in sd
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        out4, out5 = hf4(imgs, noise=noise), hf5(imgs, noise=noise)
        assert_close(out4.logits, out5.logits, what="4.x vs 5.x logits")
        assert_close(out4.loss, out5.loss, what="4.x vs 5.x loss")
        # the interop converters read the 4.x names too
        fast = fastmae.MaskedAutoencoderViT(**model_config_from_hf(hf4.config))
        fast.load_state_dict(hf_to_official(sd), strict=True)
        loss, pred, _ = fast(imgs, hf4.config.mask_ratio, noise)
    assert_close(pred, out4.logits, what="fastmae from 4.x weights")


@pytest.mark.parametrize("generation,sdpa_class,overrides,attn", [
    ("4.5x", False, {}, "auto"), ("4.5x", True, {"norm_pix_loss": True}, "math"),
    ("4.4x", False, {"norm_pix_loss": True}, "auto"), ("4.4x", True, {}, "sdpa")])
def test_hf4_pretraining_matches_unpatched(monkeypatch, generation, sdpa_class, overrides, attn):
    hf = hf4_from(small_hf5(**overrides), sdpa_class, generation)
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)

    def step():
        out = hf(imgs, noise=noise)
        return out.loss, out.logits, out.mask, hf
    before = run_and_grads(step)
    spy = AttentionSpy(monkeypatch)
    assert apply_to(hf, attn=attn) is hf
    calls = op_calls(imgs)
    after = run_and_grads(step)
    assert_same(before, after)
    assert ran_once_each(calls, imgs), dispatch.calls
    assert spy.backends == ["sdpa" if attn == "auto" else attn] * 3
    info = hf._fastmae_applied
    assert info["model"] == "hf-vitmae-pretraining" and info["layout"] == "transformers-4"
    for name in ("vit.encoder.layer.1.attention.attention.forward",
                 "decoder.decoder_layers.0.attention.attention.forward", "forward_loss",
                 "decoder.forward", "vit.embeddings.forward"):
        assert name in info["patched"]
    # the output projection is the model's own module, untouched
    assert "forward" not in vars(hf.vit.encoder.layer[0].attention.output)


def test_hf4_encoder_model():
    cfg = copy.deepcopy(small_hf5().config)
    vit = randomize(hf4_vitmae.ViTMAEModel(cfg))
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        before = vit(imgs, noise=noise)
        apply_to(vit, kernels="torch")
        after = vit(imgs, noise=noise)
    assert torch.equal(before.mask, after.mask)
    assert_close(after.last_hidden_state, before.last_hidden_state, what="last_hidden_state")
    assert vit._fastmae_applied["model"] == "hf-vitmae"


@pytest.mark.parametrize("generation,sdpa_class", [("4.5x", False), ("4.5x", True), ("4.4x", False)])
def test_hf4_unsupported_features_raise(generation, sdpa_class):
    hf5 = small_hf5(attention_probs_dropout_prob=0.1)
    hf = apply_to(hf4_from(hf5, sdpa_class, generation))
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with pytest.raises(ConfigError, match="attention_probs_dropout_prob=0.1"):
        hf.train()(imgs, noise=noise)
    hf.eval()
    with pytest.raises(ConfigError, match="output_attentions"):
        hf(imgs, noise=noise, output_attentions=True)
    with pytest.raises(ConfigError, match="gradient with respect to the input images"):
        hf(imgs.clone().requires_grad_(), noise=noise)
    self_attn = hf.vit.encoder.layer[0].attention.attention
    x = torch.randn(2, 5, hf.config.hidden_size)
    with pytest.raises(ConfigError, match="head_mask"):
        self_attn(x, torch.ones(hf.config.num_attention_heads))
    with torch.no_grad():
        assert torch.isfinite(hf(imgs, noise=noise).loss)


def test_hf4_legacy_flags_keep_working():
    """4.40-4.47: output_hidden_states, and the decoder's output flags, run through the
    patched model."""
    hf = hf4_from(small_hf5(), generation="4.4x")
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        ref = hf(imgs, noise=noise, output_hidden_states=True)
        apply_to(hf)
        out = hf(imgs, noise=noise, output_hidden_states=True)
        dec = hf.decoder(out.hidden_states[-1], out.ids_restore, output_hidden_states=True,
                         return_dict=False)
    assert len(out.hidden_states) == len(ref.hidden_states) == 3
    for a, b in zip(out.hidden_states, ref.hidden_states):
        assert_close(a, b, what="hidden state")
    assert isinstance(dec, tuple) and len(dec) == 2 and len(dec[1]) == 2
    with pytest.raises(ConfigError, match="output_attentions"):
        hf(imgs, noise, None, True)  # positional output_attentions
