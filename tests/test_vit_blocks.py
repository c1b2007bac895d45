"""ViT blocks on the split residual stream (adds fused into the LayerNorms, fc1 bias fused
into GELU) against timm's block formula, with random LayerNorm weights and DropPath."""
import pytest
import torch

from fastmae.models.vit import Block, run_blocks
from fastmae.ops import dispatch
from tests.helpers import randomize


def timm_block(blk, x):
    """timm's Block.forward, written out with the block's own modules."""
    x = x + blk.drop_path(blk.attn(blk.norm1(x)))
    return x + blk.drop_path(blk.mlp.fc2(blk.mlp.act(blk.mlp.fc1(blk.norm2(x)))))


def grads_of(module, x):
    return [x.grad] + [p.grad for p in module.parameters()]


@pytest.mark.parametrize("kernels", ["torch", "triton"])
@pytest.mark.parametrize("drop_path", [0.0, 0.5])
def test_block_matches_timm_formula(kernels, drop_path):
    blk = randomize(Block(24, 3, 2.0, 1e-6, "math", drop_path, kernels=kernels))
    blk.train()
    x = torch.randn(4, 5, 24, requires_grad=True)
    g = torch.randn(4, 5, 24)
    before = dict(dispatch.calls)
    torch.manual_seed(1)  # the same DropPath draws, in the same order
    out = blk(x)
    out.backward(g)
    fused = grads_of(blk, x)
    if kernels == "triton":
        assert dispatch.calls["add_layer_norm:triton"] == before.get("add_layer_norm:triton", 0) + 2
        assert dispatch.calls["bias_gelu:triton"] == before.get("bias_gelu:triton", 0) + 1
    x.grad = None
    blk.zero_grad()
    torch.manual_seed(1)
    ref = timm_block(blk, x)
    ref.backward(g)
    if drop_path:  # DropPath really dropped (and rescaled) branches in this draw
        blk.eval()
        assert not torch.allclose(out, blk(x), rtol=1e-3, atol=1e-3)
        blk.train()
    if kernels == "torch":
        assert torch.equal(out, ref)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(fused, grads_of(blk, x)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_run_blocks_is_norm_of_the_blocks(kernels):
    blocks = torch.nn.ModuleList([randomize(Block(16, 2, 2.0, 1e-6, "math")) for _ in range(2)])
    norm = randomize(torch.nn.LayerNorm(16, eps=1e-6))
    x = torch.randn(2, 6, 16)
    expected = x
    for blk in blocks:
        expected = timm_block(blk, expected)
    expected = norm(expected)
    torch.testing.assert_close(run_blocks(blocks, x, norm, kernels), expected, rtol=1e-5, atol=1e-5)
    # no blocks at all: just the norm
    torch.testing.assert_close(run_blocks([], x, norm, kernels), norm(x), rtol=1e-5, atol=1e-5)


def test_state_dict_keeps_timm_names():
    keys = set(Block(16, 2).state_dict())
    assert keys == {f"{m}.{p}" for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
                    for p in ("weight", "bias")}
