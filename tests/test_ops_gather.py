"""gather_visible_patches: the Triton kernel (interpreted on CPU here) against the torch
implementation and an fp64 patch-by-patch reference."""
import pytest
import torch

from fastmae.settings import BackendUnavailable
from fastmae.kernels import gather as gather_kernels
from fastmae.ops import gather_visible_patches
from fastmae.ops.gather import OP, gather_visible_patches_torch
from tests.kernel_checks import CallCounter, patches_reference, require_compiled

# (B, C, H, W, p, K): p=14 with H != W, a single channel, K and p*p*C not powers of two.
SHAPES = [(1, 3, 28, 42, 14, 5), (2, 1, 32, 16, 16, 1), (2, 3, 12, 20, 4, 7)]


def random_ids(B, L, K):
    return torch.rand(B, L).argsort(dim=1)[:, :K]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B,C,H,W,p,K", SHAPES)
def test_gather_matches_references(B, C, H, W, p, K, dtype):
    imgs = torch.randn(B, C, H, W).to(dtype)
    ids = random_ids(B, (H // p) * (W // p), K)
    with CallCounter(OP) as calls:
        out = gather_visible_patches(imgs, ids, p, kernels="triton")
    assert calls.ran("triton") == 1
    assert out.dtype == dtype and out.shape == (B, K, p * p * C)
    # A gather copies values: exact in every dtype.
    assert torch.equal(out, gather_visible_patches_torch(imgs, ids, p))
    ref = patches_reference(imgs, p)
    expected = torch.gather(ref, 1, ids.unsqueeze(-1).expand(-1, -1, ref.shape[-1]))
    assert torch.equal(out.double(), expected)


def test_every_output_element_is_written():
    B, C, H, W, p, K = 2, 3, 28, 42, 14, 5
    imgs = torch.randn(B, C, H, W)
    ids = random_ids(B, 6, K)
    out = torch.full((B, K, p * p * C), float("nan"))
    gather_kernels.gather_fwd(imgs, ids, p, out=out)
    assert not torch.isnan(out).any()
    assert torch.equal(out, gather_visible_patches_torch(imgs, ids, p))


def test_strided_images_and_broadcast_ids():
    # channels_last images and an expanded (stride-0) index row, as forward_features passes.
    imgs = torch.randn(2, 3, 16, 24).to(memory_format=torch.channels_last)
    ids = torch.arange(6).expand(2, -1)
    out = gather_visible_patches(imgs, ids, 8, kernels="triton")
    assert torch.equal(out, gather_visible_patches_torch(imgs.contiguous(), ids, 8))
    assert torch.equal(out.double(), patches_reference(imgs, 8))


def test_int32_ids_and_no_gradient_to_images():
    imgs = torch.randn(1, 3, 16, 16, requires_grad=True)
    ids = random_ids(1, 4, 3)
    out = gather_visible_patches(imgs, ids.to(torch.int32), 8, kernels="triton")
    assert not out.requires_grad
    assert torch.equal(out, gather_visible_patches_torch(imgs.detach(), ids, 8))


def test_kernel_turns_out_of_range_index_into_nan_not_a_foreign_read():
    imgs = torch.randn(1, 1, 8, 8)
    ids = torch.tensor([[0, 4, 3]])  # 4 patches in the grid: index 4 is outside it
    out = gather_kernels.gather_fwd(imgs, ids, 4)
    assert torch.isnan(out[0, 1]).all()
    assert torch.equal(out[0, [0, 2]], gather_visible_patches_torch(imgs, ids[:, [0, 2]], 4)[0])


@pytest.mark.parametrize("ids,match", [
    (torch.tensor([[0, 4]]), r"outside \[0, 4\)"),
    (torch.tensor([[-1, 0]]), r"outside \[0, 4\)"),
    (torch.tensor([[0.0, 1.0]]), "int64 or int32"),
    (torch.tensor([0, 1]), r"\(B, K\) with B=1"),
    (torch.tensor([[0, 1], [2, 3]]), r"\(B, K\) with B=1"),
])
def test_bad_indices_raise(ids, match):
    with pytest.raises(ValueError, match=match):
        gather_visible_patches(torch.randn(1, 1, 8, 8), ids, 4, kernels="triton")


def test_bad_images_raise():
    ids = torch.tensor([[0]])
    with pytest.raises(ValueError, match="not a multiple of the patch size 4"):
        gather_visible_patches(torch.randn(1, 1, 8, 6), ids, 4)
    with pytest.raises(ValueError, match="4-D"):
        gather_visible_patches(torch.randn(1, 8, 8), ids, 4)
    with pytest.raises(ValueError, match="floating-point"):
        gather_visible_patches(torch.ones(1, 1, 8, 8, dtype=torch.uint8), ids, 4)


def test_out_buffer_is_checked():
    with pytest.raises(ValueError, match="out must be a contiguous torch.float32 tensor"):
        gather_kernels.gather_fwd(torch.randn(1, 1, 8, 8), torch.tensor([[0]]), 4,
                                  out=torch.empty(1, 1, 15))


def test_triton_without_cuda_or_interpreter_raises(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendUnavailable, match="Triton kernels need CUDA tensors"):
        gather_visible_patches(torch.randn(1, 1, 8, 8), torch.tensor([[0]]), 4, kernels="triton")
    with CallCounter(OP) as calls:  # auto runs torch there
        gather_visible_patches(torch.randn(1, 1, 8, 8), torch.tensor([[0]]), 4)
    assert calls.ran("torch") == 1


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gather_compiled_vit_b(dtype):
    require_compiled()
    B, L, K, p = 64, 196, 49, 16
    imgs = torch.randn(B, 3, 224, 224, device="cuda").to(dtype)
    ids = torch.rand(B, L, device="cuda").argsort(dim=1)[:, :K]
    out = torch.full((B, K, p * p * 3), float("nan"), device="cuda", dtype=dtype)
    gather_kernels.gather_fwd(imgs, ids, p, out=out)
    assert torch.equal(out, gather_visible_patches_torch(imgs, ids, p))


def test_patch_split_over_several_blocks(monkeypatch):
    monkeypatch.setattr(gather_kernels, "MAX_BLOCK", 64)  # p*p*C = 588 -> 10 blocks
    imgs = torch.randn(1, 3, 28, 42)
    ids = random_ids(1, 6, 4)
    out = torch.full((1, 4, 588), float("nan"))
    gather_kernels.gather_fwd(imgs, ids, 14, out=out)
    assert torch.equal(out, gather_visible_patches_torch(imgs, ids, 14))
