"""Small shared test utilities."""
import torch

import fastmae
from fastmae import reference

TINY = dict(img_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=2, num_heads=4,
            decoder_embed_dim=24, decoder_depth=1, decoder_num_heads=3, mlp_ratio=2.0)


def tiny_pair(**overrides):
    """A fast model and a reference model with the same weights."""
    cfg = {**TINY, **overrides}
    fast_only = {k: cfg.pop(k) for k in ("kernels", "attn") if k in cfg}
    ref = reference.MaskedAutoencoderViT(**cfg)
    fast = fastmae.MaskedAutoencoderViT(**cfg, **fast_only)
    fast.load_state_dict(ref.state_dict(), strict=True)
    return fast, ref


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_close(a, b, rtol=1e-5, atol=1e-6, what=""):
    assert not torch.isnan(a).any(), f"{what}: NaN"
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")
