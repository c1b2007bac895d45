"""Shared checks of the fastmae.apply_to tests: did the patched model compute the same
thing, and did fastmae's ops and attention really run."""
import torch

from fastmae.models import attention as attn_backends
from fastmae.ops import dispatch
from tests.helpers import assert_close

OPS = ("gather_visible_patches", "unshuffle_with_mask_token", "masked_pixel_loss")


def op_calls(imgs, kernels="auto"):
    """Calls so far of each fastmae op with the implementation dispatch picks for imgs."""
    impl = dispatch.resolve(kernels, imgs)
    return {op: dispatch.calls[f"{op}:{impl}"] for op in OPS}


def ran_once_each(before: dict, imgs, kernels="auto") -> bool:
    after = op_calls(imgs, kernels)
    return all(after[op] == before[op] + 1 for op in OPS)


class AttentionSpy:
    """Counts calls of fastmae's attention entry point (and which backend ran)."""

    def __init__(self, monkeypatch):
        self.backends = []
        real = attn_backends.attention

        def spy(qkv, num_heads, backend):
            self.backends.append(backend)
            return real(qkv, num_heads, backend)
        monkeypatch.setattr(attn_backends, "attention", spy)


def run_and_grads(step):
    """step() -> (loss, pred, mask, model); returns those detached plus every gradient."""
    loss, pred, mask, model = step()
    model.zero_grad(set_to_none=True)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), pred.detach(), mask, grads


def assert_same(before, after):
    (l0, p0, m0, g0), (l1, p1, m1, g1) = before, after
    assert m0.dtype == m1.dtype == torch.float32
    assert torch.equal(m0, m1)
    assert_close(p1, p0, what="pred")
    assert_close(l1, l0, what="loss")
    assert g0.keys() == g1.keys() and len(g0) > 0
    for name in g0:
        assert_close(g1[name], g0[name], rtol=1e-5, atol=1e-6, what=f"grad {name}")
