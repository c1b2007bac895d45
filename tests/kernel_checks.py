"""Shared checks for the op/kernel tests: independent references and the precision rule."""
import torch

from fastmae.ops import dispatch


def patches_reference(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, p*p*C) in fp64, built patch by patch (row p, column q,
    channel c; c fastest): independent of the einsum used by fastmae.ops.patchify."""
    B, C, H, W = imgs.shape
    p = patch_size
    rows = []
    for b in range(B):
        per_img = []
        for gh in range(H // p):
            for gw in range(W // p):
                block = imgs[b, :, gh * p:(gh + 1) * p, gw * p:(gw + 1) * p].double()
                per_img.append(block.permute(1, 2, 0).reshape(-1))
        rows.append(torch.stack(per_img))
    return torch.stack(rows)


def bf16_ulp(t: torch.Tensor) -> torch.Tensor:
    """The spacing of bf16 numbers at each |t| (8 significant bits)."""
    _, exponent = torch.frexp(t.double().abs().clamp(min=2.0**-126))
    return torch.ldexp(torch.ones_like(t, dtype=torch.float64), exponent - 8)


def assert_low_precision_close(out, torch_out, ref64, atol, what):
    """flash-attention's rule: the kernel's error against fp64 is at most twice the torch
    implementation's own error in the same dtype, plus a small atol. NaN never passes.

    Triton's interpreter casts fp32 -> bf16 by truncation where compiled kernels round to
    nearest; interpreted bf16 outputs get one bf16 ulp of extra room per element (the GPU
    tests hold the compiled kernels to the plain rule)."""
    assert not torch.isnan(out).any(), f"{what}: NaN in the kernel output"
    assert out.shape == ref64.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref64.shape)}"
    err = (out.double() - ref64).abs()
    torch_err = (torch_out.double() - ref64).abs().max().item()
    bound = torch.full_like(err, 2 * torch_err + atol)
    if dispatch.interpreting() and out.dtype == torch.bfloat16:
        bound = bound + bf16_ulp(ref64)
    worst = (err - bound).argmax()
    assert bool((err <= bound).all()), (
        f"{what}: error {err.flatten()[worst].item():.3g} > allowed {bound.flatten()[worst].item():.3g} "
        f"(2 x torch error {torch_err:.3g} + {atol})")


class CallCounter:
    """Counts how often each implementation of an op ran inside a with-block."""

    def __init__(self, op: str):
        self.op = op

    def __enter__(self):
        self.before = dict(dispatch.calls)
        return self

    def __exit__(self, *exc):
        return False

    def ran(self, impl: str) -> int:
        key = f"{self.op}:{impl}"
        return dispatch.calls[key] - self.before.get(key, 0)


def require_compiled():
    """GPU tests check the compiled kernels: the default test run interprets them."""
    import pytest
    if dispatch.interpreting():
        pytest.skip("TRITON_INTERPRET=1 would interpret the kernels; run GPU tests with "
                    "TRITON_INTERPRET=0 pytest -m gpu")
