"""pytest-benchmark suites of the fused ops, forward + backward, Triton vs torch.

    pytest benchmarks/ --benchmark-only [--benchmark-json ops.json]

On CUDA: ViT-B/16 sizes (B=256, L=196, K=49, p=16, decoder D=512; encoder width 768
and MLP 3072 for the LayerNorm and bias+GELU) in bf16 as under autocast; each benchmark also stores in extra_info the CUDA-event median time
(triton.testing.do_bench), the minimum bytes the op must move, the achieved GB/s and its
fraction of the datasheet HBM bandwidth and of a measured device copy. Without CUDA:
small sizes, torch path only (CPU numbers, labelled as such by the device field)."""
import pytest
import torch

from fastmae.bench.harness import device_name
from fastmae.ops import (add_layer_norm, bias_gelu, gather_visible_patches, masked_pixel_loss,
                         unshuffle_with_mask_token)
from op_traffic import (add_layer_norm_bytes, bias_gelu_bytes, gather_bytes, loss_bytes,
                        spec_hbm_gbps, unshuffle_bytes)

IMPLS = ["triton", "torch"]


def sizes(device):
    if device.type == "cuda":
        return dict(B=256, img=224, p=16, C=3, D=512, keep=49, width=768, dtype=torch.bfloat16)
    return dict(B=8, img=64, p=16, C=3, D=64, keep=4, width=64, dtype=torch.float32)


def run(benchmark, fn, device, bytes_moved, info, copy_gbps):
    """Time fn (which runs the whole forward + backward) and record the traffic figures."""
    benchmark.extra_info.update(info, device=device_name(device), bytes=bytes_moved)
    if device.type == "cuda":
        import triton.testing
        ms = triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
        gbps = bytes_moved / (ms * 1e-3) / 1e9
        peak = spec_hbm_gbps(device_name(device))
        benchmark.extra_info.update(
            cuda_event_median_ms=ms, achieved_gbps=gbps,
            hbm_spec_gbps=peak, hbm_fraction=gbps / peak if peak else None,
            copy_gbps=copy_gbps, copy_fraction=gbps / copy_gbps if copy_gbps else None)

        def synced():
            fn()
            torch.cuda.synchronize(device)
        benchmark.pedantic(synced, rounds=20, iterations=5, warmup_rounds=2)
    else:
        benchmark(fn)


@pytest.mark.parametrize("impl", IMPLS)
def test_bench_gather(benchmark, device, impl_ready, copy_gbps, impl):
    impl_ready(impl)
    s = sizes(device)
    B, p, C = s["B"], s["p"], s["C"]
    L = (s["img"] // p) ** 2
    imgs = torch.randn(B, C, s["img"], s["img"], device=device).to(s["dtype"])
    ids = torch.rand(B, L, device=device).argsort(dim=1)[:, :s["keep"]]
    benchmark.group = "gather_visible_patches (forward)"

    def fn():
        return gather_visible_patches(imgs, ids, p, kernels=impl)
    run(benchmark, fn, device, gather_bytes(B, s["keep"], p * p * C, imgs.element_size()),
        dict(impl=impl, shape=[B, L, s["keep"], p * p * C], dtype=str(s["dtype"])), copy_gbps)


@pytest.mark.parametrize("impl", IMPLS)
def test_bench_unshuffle(benchmark, device, impl_ready, copy_gbps, impl):
    impl_ready(impl)
    s = sizes(device)
    B, D, K = s["B"], s["D"], s["keep"]
    L = (s["img"] // s["p"]) ** 2
    x = torch.randn(B, 1 + K, D, device=device).to(s["dtype"]).requires_grad_()
    mask_token = torch.randn(1, 1, D, device=device, requires_grad=True)  # fp32 parameters
    pos = torch.randn(1, 1 + L, D, device=device)
    ids_restore = torch.rand(B, L, device=device).argsort(1).argsort(1)
    out_dtype = torch.promote_types(x.dtype, pos.dtype)
    g = torch.randn(B, 1 + L, D, device=device, dtype=out_dtype)
    benchmark.group = "unshuffle_with_mask_token (forward + backward)"

    def fn():
        out = unshuffle_with_mask_token(x, mask_token, ids_restore, pos, kernels=impl)
        return torch.autograd.grad(out, (x, mask_token), g)
    nbytes = unshuffle_bytes(B, L, K, D, x.element_size(), pos.element_size(),
                             torch.empty(0, dtype=out_dtype).element_size())
    run(benchmark, fn, device, nbytes,
        dict(impl=impl, shape=[B, L, K, D], dtype=str(s["dtype"]), out_dtype=str(out_dtype)), copy_gbps)


@pytest.mark.parametrize("norm_pix_loss", [False, True])
@pytest.mark.parametrize("impl", IMPLS)
def test_bench_loss(benchmark, device, impl_ready, copy_gbps, impl, norm_pix_loss):
    impl_ready(impl)
    s = sizes(device)
    B, p, C, K = s["B"], s["p"], s["C"], s["keep"]
    L = (s["img"] // p) ** 2
    imgs = torch.randn(B, C, s["img"], s["img"], device=device).to(s["dtype"])
    pred = torch.randn(B, L, p * p * C, device=device).to(s["dtype"]).requires_grad_()
    mask = (torch.rand(B, L, device=device).argsort(1).argsort(1) >= K).float()
    benchmark.group = f"masked_pixel_loss norm_pix_loss={norm_pix_loss} (forward + backward)"

    def fn():
        loss = masked_pixel_loss(pred, imgs, mask, p, norm_pix_loss, kernels=impl)
        return torch.autograd.grad(loss, pred)
    nbytes = loss_bytes(B, L, K, p * p * C, pred.element_size(), imgs.element_size())
    run(benchmark, fn, device, nbytes,
        dict(impl=impl, shape=[B, L, K, p * p * C], dtype=str(s["dtype"]),
             norm_pix_loss=norm_pix_loss), copy_gbps)


@pytest.mark.parametrize("impl", IMPLS)
def test_bench_add_layer_norm(benchmark, device, impl_ready, copy_gbps, impl):
    # An encoder block's norm2: the bf16 attention output added to the fp32 residual stream.
    impl_ready(impl)
    s = sizes(device)
    M, N = s["B"] * (1 + s["keep"]), s["width"]
    x = torch.randn(M, N, device=device).to(s["dtype"]).requires_grad_()
    res = torch.randn(M, N, device=device, requires_grad=True)
    w = torch.randn(N, device=device, requires_grad=True)
    b = torch.randn(N, device=device, requires_grad=True)
    gy, gh = torch.randn(M, N, device=device).to(s["dtype"]), torch.randn(M, N, device=device)
    benchmark.group = "add_layer_norm (forward + backward)"

    def fn():
        with torch.autocast(device.type, dtype=s["dtype"], enabled=s["dtype"] != torch.float32):
            y, h = add_layer_norm(x, res, w, b, 1e-6, kernels=impl)
        return torch.autograd.grad((y, h), (x, res, w, b), (gy.to(y.dtype), gh))
    nbytes = add_layer_norm_bytes(M, N, x.element_size(), res.element_size(), gy.element_size())
    run(benchmark, fn, device, nbytes, dict(impl=impl, shape=[M, N], dtype=str(s["dtype"])), copy_gbps)


@pytest.mark.parametrize("impl", IMPLS)
def test_bench_bias_gelu(benchmark, device, impl_ready, copy_gbps, impl):
    # An encoder block's fc1 output (MLP width 4x) with its fp32 bias.
    impl_ready(impl)
    s = sizes(device)
    M, N = s["B"] * (1 + s["keep"]), 4 * s["width"]
    x = torch.randn(M, N, device=device).to(s["dtype"]).requires_grad_()
    bias = torch.randn(N, device=device, requires_grad=True)
    g = torch.randn(M, N, device=device).to(s["dtype"])
    benchmark.group = "bias_gelu (forward + backward)"

    def fn():
        return torch.autograd.grad(bias_gelu(x, bias, kernels=impl), (x, bias), g)
    run(benchmark, fn, device, bias_gelu_bytes(M, N, x.element_size()),
        dict(impl=impl, shape=[M, N], dtype=str(s["dtype"])), copy_gbps)
