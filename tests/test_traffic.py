"""The byte/FLOP model of a step: counts that agree with torch's own FLOP counter, exact
extrapolation in the batch size, CUDA autocast's casts emulated, and the roofline sum."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import fastmae
from fastmae.perf import traffic
from fastmae.reference import create_reference


def _step(model, batch, precision="fp32"):
    torch.manual_seed(1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    imgs = torch.randn(batch, 3, 32, 32)
    return traffic.record_step(model, opt, imgs, lambda m, x: m(x, 0.75)[0], precision)


@pytest.fixture(scope="module")
def micro():
    torch.manual_seed(0)
    return fastmae.create_model("mae_vit_micro_patch4", img_size=32, kernels="torch")


def test_flops_match_torch_flop_counter(micro):
    ops = _step(micro, 2)
    counter = FlopCounterMode(display=False)
    opt = torch.optim.AdamW(micro.parameters(), lr=1e-4)
    with counter:
        micro(torch.randn(2, 3, 32, 32), 0.75)[0].backward()
    opt.zero_grad(set_to_none=True)
    gemm_attn = sum(o.flops for o in ops if o.kind in ("gemm", "attention"))
    assert gemm_attn > 0
    # The CPU flash-attention kernel is not in torch's registry; we count it as the GPU one.
    cpu_attn = sum(o.flops for o in ops if o.kind == "attention")
    assert gemm_attn - cpu_attn == pytest.approx(counter.get_total_flops(), rel=1e-9)


def test_every_cost_is_linear_in_the_batch(micro):
    estimate = traffic.extrapolate(_step(micro, 2), _step(micro, 3), 2, 3, 5)
    direct = _step(micro, 5)
    assert [o.op for o in estimate] == [o.op for o in direct]
    for e, d in zip(estimate, direct):
        assert e.flops == pytest.approx(d.flops, rel=1e-9, abs=1e-6), e.op
        assert e.bytes == pytest.approx(d.bytes, rel=1e-9, abs=1e-6), e.op


def test_different_op_sequences_refuse_to_extrapolate():
    a = [traffic.OpCost("mm", "gemm", 1, 1, 1)]
    b = [traffic.OpCost("add", "glue", 1, 1, 1)]
    with pytest.raises(RuntimeError, match="different ops"):
        traffic.extrapolate(a, b, 2, 3, 8)


def test_cuda_autocast_policy_casts_as_cuda_does():
    lin, ln = torch.nn.Linear(8, 8), torch.nn.LayerNorm(8)
    x = torch.randn(4, 8)
    with traffic.CudaAutocastPolicy(torch.bfloat16):
        h = lin(x)
        y = ln(h)
        z = torch.cat([h, x])
    assert h.dtype == torch.bfloat16      # matmuls in the low precision
    assert y.dtype == torch.float32       # layer norm in fp32, as on CUDA (unlike CPU autocast)
    assert z.dtype == torch.float32       # cat promotes to the widest input


def test_views_are_free_and_bytes_count_reads_and_writes():
    x = torch.randn(16, 32)
    with traffic.TrafficMode() as mode:
        y = x.t().contiguous()
        x.view(32, 16)
    assert [o.op for o in mode.ops] == ["clone"]
    assert mode.ops[0].bytes_read == mode.ops[0].bytes_written == x.numel() * 4
    assert y.shape == (32, 16)


def test_broadcast_inputs_are_read_once():
    row = torch.randn(1, 64).expand(128, 64)
    assert traffic.tensor_bytes(row) == 64 * 4


def test_roofline_is_the_slower_of_compute_and_memory_plus_a_launch():
    gpu = traffic.GPUS["h100-sxm"]
    compute_bound = traffic.OpCost("mm", "gemm", 1e12, 1e6, 1e6)
    memory_bound = traffic.OpCost("add", "glue", 1e6, 2e9, 1e9)
    assert compute_bound.seconds(gpu) == pytest.approx(1e12 / gpu.peak_flops + traffic.LAUNCH_S)
    assert memory_bound.seconds(gpu) == pytest.approx(3e9 / gpu.bandwidth + traffic.LAUNCH_S)


def test_bf16_step_keeps_layer_norm_in_fp32_and_halves_gemm_bytes():
    """Under CUDA's policy the reference's LayerNorms move fp32 bytes even in a bf16 step
    (the glue the fused kernels remove), while its GEMMs move bf16."""
    torch.manual_seed(0)
    ref = create_reference("mae_vit_micro_patch4", img_size=32)
    fp32, bf16 = _step(ref, 2, "fp32"), _step(ref, 2, "bf16")

    def total(ops, name):
        return sum(o.bytes for o in ops if o.op == name)

    assert total(bf16, "native_layer_norm") == pytest.approx(total(fp32, "native_layer_norm"))
    assert total(bf16, "native_layer_norm") > 0
    assert total(bf16, "addmm") < 0.6 * total(fp32, "addmm")
    summary = traffic.summarize(bf16, 2)
    assert set(summary["gpus"]) == set(traffic.GPUS)
    assert summary["non_gemm_mbytes_per_image"] > 0
