"""Small shared test utilities."""
import pytest
import torch

import fastmae
from fastmae import reference

TINY = dict(img_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=2, num_heads=4,
            decoder_embed_dim=24, decoder_depth=1, decoder_num_heads=3, mlp_ratio=2.0)


def tiny_pair(**overrides):
    """A fast model and a reference model with the same random weights (norms, biases and
    position embeddings too: an init of ones and zeros would hide a misplaced one)."""
    cfg = {**TINY, **overrides}
    fast_only = {k: cfg.pop(k) for k in ("kernels", "attn") if k in cfg}
    ref = randomize(reference.MaskedAutoencoderViT(**cfg))
    fast = fastmae.MaskedAutoencoderViT(**cfg, **fast_only)
    fast.load_state_dict(ref.state_dict(), strict=True)
    return fast, ref


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_close(a, b, rtol=1e-5, atol=1e-6, what=""):
    assert not torch.isnan(a).any(), f"{what}: NaN"
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def hf_lib():
    return pytest.importorskip("transformers")


def randomize(module, scale=0.2):
    """Every parameter (norms, biases, position embeddings too) random, so that a
    misplaced tensor shows."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * scale)
    return module


def tiny_hf(**overrides):
    """A small random Hugging Face ViTMAEForPreTraining (skips the test without transformers)."""
    cfg = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
               decoder_hidden_size=24, decoder_num_hidden_layers=1, decoder_num_attention_heads=3,
               decoder_intermediate_size=48, image_size=32, patch_size=8, num_channels=3,
               mask_ratio=0.75)
    cfg.update(overrides)
    tf = hf_lib()
    return randomize(tf.ViTMAEForPreTraining(tf.ViTMAEConfig(**cfg)))
