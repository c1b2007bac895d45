"""The Hugging Face contender of the benchmark: SDPA attention in every layer (encoder and
decoder), on the transformers 5 layout and on the 4.x layout."""
import pytest
import torch

pytest.importorskip("transformers")

from fastmae import interop  # noqa: E402
from fastmae.apply import hf_attention_modules  # noqa: E402
from fastmae.bench import contenders as cont  # noqa: E402
from tests.test_apply_hf4 import hf4_from  # noqa: E402

SETUP = dict(model="mae_vit_tiny_patch16", img_size=32, mask_ratio=0.75, precision="fp32",
             device=torch.device("cpu"))


def test_hf_contender_runs_sdpa_in_every_layer():
    c = cont.build_hf(cont.Setup(**SETUP))
    impls = cont.hf_attention_impls(c.model)
    assert len(impls) == 12 + 4 and set(impls.values()) == {"sdpa"}
    assert any(name.startswith("decoder.") for name in impls)
    c.step(torch.randn(2, 3, 32, 32))
    assert torch.isfinite(c.last_loss)


def test_hf_contender_switches_eager_layers_to_sdpa(monkeypatch):
    """set_attn_implementation misses the decoder's own config copy; every layer is checked."""
    real = interop.to_hf_vitmae

    def eager(*args, **kwargs):
        model = real(*args, **kwargs)
        for _, module, _ in hf_attention_modules(model):
            module.config._attn_implementation = "eager"
        return model
    monkeypatch.setattr(interop, "to_hf_vitmae", eager)
    c = cont.build_hf(cont.Setup(**SETUP))
    assert set(cont.hf_attention_impls(c.model).values()) == {"sdpa"}


def test_hf_contender_on_the_4x_layout(monkeypatch):
    real = interop.to_hf_vitmae
    monkeypatch.setattr(interop, "to_hf_vitmae", lambda *a, **k: hf4_from(real(*a, **k), sdpa_class=True))
    c = cont.build_hf(cont.Setup(**SETUP))
    impls = cont.hf_attention_impls(c.model)
    assert "vit.encoder.layer.0.attention.attention" in impls and set(impls.values()) == {"sdpa"}
    c.step(torch.randn(2, 3, 32, 32))
    assert torch.isfinite(c.last_loss)
