"""torch.compile sees through every fastmae op: a whole MAE training step (forward, loss,
and the backward AOTAutograd derives from the same graph) compiles with fullgraph=True
and no graph break, with the torch ops and with the Triton custom ops (interpreted on CPU
here), and the compiled loss and gradients equal eager ones."""
import pytest
import torch

import fastmae
from fastmae.ops import dispatch
from tests.helpers import grads

# Smaller than tests.helpers.TINY: tracing time grows with the number of blocks.
MICRO = dict(img_size=16, patch_size=4, in_chans=3, embed_dim=16, depth=1, num_heads=2,
             decoder_embed_dim=8, decoder_depth=1, decoder_num_heads=2, mlp_ratio=2.0)
CUSTOM_OPS = {"fastmae.gather_visible_patches.default", "fastmae.add_layer_norm.default",
              "fastmae.bias_gelu.default", "fastmae.unshuffle_with_mask_token.default",
              "fastmae.masked_pixel_loss.default"}


def model_and_batch(kernels, norm_pix_loss=True):
    model = fastmae.MaskedAutoencoderViT(**MICRO, kernels=kernels, norm_pix_loss=norm_pix_loss)
    with torch.no_grad():  # random LayerNorm weights and biases: a misplaced one shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn_like(p))
    return model, torch.randn(2, 3, 16, 16), torch.rand(2, model.num_patches)


def train_step(model):
    def step(imgs, noise):
        loss, _, _ = model(imgs, 0.75, noise)
        return loss
    return step


@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_training_step_traces_as_one_graph(kernels):
    model, imgs, noise = model_and_batch(kernels)
    explained = torch._dynamo.explain(train_step(model))(imgs, noise)
    assert explained.graph_break_count == 0, [str(r) for r in explained.break_reasons]
    assert explained.graph_count == 1
    targets = {str(node.target) for graph in explained.graphs for node in graph.graph.nodes}
    seen = {t for t in targets if t.startswith("fastmae.")}
    assert seen == (CUSTOM_OPS if kernels == "triton" else set())


def compiled_matches_eager(kernels, backend):
    model, imgs, noise = model_and_batch(kernels)
    step = train_step(model)
    eager_loss = step(imgs, noise)
    eager_loss.backward()
    eager_grads = grads(model)
    model.zero_grad()
    torch._dynamo.reset()  # graphs of earlier tests' models would count as recompiles
    compiled = torch.compile(step, fullgraph=True, backend=backend)
    before = dict(dispatch.calls)
    with torch._dynamo.config.patch(error_on_recompile=True):  # a second step reuses the graph
        loss = compiled(imgs, noise)
        loss.backward()
        compiled_grads = grads(model)
        model.zero_grad()
        compiled(imgs, noise).backward()
    ran = {k: n - before.get(k, 0) for k, n in dispatch.calls.items() if n != before.get(k, 0)}
    if kernels == "triton":  # the custom ops' bodies ran the kernels, in the compiled graph
        assert ran.get("add_layer_norm:triton", 0) >= 2 and ran.get("masked_pixel_loss:triton", 0) >= 2
    else:  # the torch path is counted in eager code only (a count traced would recompile)
        assert ran == {}
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-7)
    assert compiled_grads.keys() == eager_grads.keys() and "mask_token" in eager_grads
    for name, g in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], g, rtol=1e-5, atol=1e-6,
                                   msg=lambda m: f"grad {name}: {m}")


@pytest.mark.slow
@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_compiled_step_matches_eager_aot(kernels):
    # AOTAutograd traces forward and backward through the fake implementations and the
    # autograd registrations of the custom ops; aot_eager runs its graphs as they are.
    compiled_matches_eager(kernels, "aot_eager")


@pytest.mark.slow
@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_compiled_step_matches_eager_inductor(kernels):
    compiled_matches_eager(kernels, "inductor")


@pytest.mark.slow
def test_bf16_autocast_step_traces_and_matches_eager():
    # Under autocast the LayerNorm output dtype is read from the autocast state while tracing.
    model, imgs, noise = model_and_batch("triton")
    step = train_step(model)

    def amp_step(imgs, noise):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return step(imgs, noise)
    explained = torch._dynamo.explain(amp_step)(imgs, noise)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)
    compiled = torch.compile(amp_step, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(imgs, noise), amp_step(imgs, noise), rtol=1e-5, atol=1e-7)
