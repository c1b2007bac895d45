"""Every kernel launch enters the CUDA device of its tensors (a Triton launch otherwise
goes to the current device, and a model on cuda:1 would run its kernels on cuda:0)."""
import contextlib
import types

import pytest
import torch

from fastmae import ops
from fastmae.kernels import bias_gelu, device, gather, layer_norm, loss, unshuffle

MODULES = (gather, unshuffle, loss, layer_norm, bias_gelu)


def test_guard_enters_a_cuda_tensors_device_and_nothing_for_cpu():
    assert isinstance(device.guard(torch.randn(2)), contextlib.nullcontext)
    fake_cuda = types.SimpleNamespace(is_cuda=True, device=torch.device("cuda", 1))
    ctx = device.guard(fake_cuda)  # not entered: this machine may have no driver
    assert isinstance(ctx, torch.cuda.device) and ctx.idx == 1


def test_every_launcher_runs_inside_the_guard(monkeypatch):
    entered = []

    def recording_guard(t):
        entered.append(t.device)
        return contextlib.nullcontext()
    for module in MODULES:
        monkeypatch.setattr(module, "guard", recording_guard)
    B, C, H, W, p = 2, 3, 8, 8, 4
    L, K, D = (H // p) * (W // p), 2, 8
    imgs = torch.randn(B, C, H, W)
    ids = torch.rand(B, L).argsort(1)
    ops.gather_visible_patches(imgs, ids[:, :K], p, kernels="triton")
    x = torch.randn(B, K + 1, D, requires_grad=True)
    ops.unshuffle_with_mask_token(x, torch.randn(1, 1, D, requires_grad=True), ids.argsort(1),
                                  torch.randn(1, L + 1, D), kernels="triton").sum().backward()
    pred = torch.randn(B, L, p * p * C, requires_grad=True)
    ops.masked_pixel_loss(pred, imgs, torch.ones(B, L), p, kernels="triton").backward()
    w = torch.randn(D, requires_grad=True)
    y, h = ops.add_layer_norm(x, torch.randn_like(x), w, torch.randn(D), kernels="triton")
    (y.sum() + h.sum()).backward()
    ops.bias_gelu(x, torch.randn(D), kernels="triton").sum().backward()
    # gather 1, unshuffle 2, loss 2, layer norm 2, bias+gelu 2
    assert len(entered) == 9 and set(entered) == {torch.device("cpu")}


@pytest.mark.gpu
def test_ops_run_on_a_second_gpu():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    from tests.kernel_checks import require_compiled
    require_compiled()
    torch.cuda.set_device(0)
    x = torch.randn(64, 96, device="cuda:1", requires_grad=True)
    w, b = torch.randn(96, device="cuda:1"), torch.randn(96, device="cuda:1")
    y, _ = ops.add_layer_norm(x, None, w, b, kernels="triton")
    expected = torch.nn.functional.layer_norm(x, (96,), w, b, 1e-6)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    out = ops.bias_gelu(x, b, kernels="triton")
    torch.testing.assert_close(out, torch.nn.functional.gelu(x + b), rtol=1e-5, atol=1e-5)
