"""Peak dense matmul throughput of known GPUs, the denominator of MFU.

Vendor datasheet figures for dense (not 2:4 sparse) tensor-core math in bf16/fp16,
TFLOP/s. MFU against these is the usual convention (PaLM, Megatron); a user who
measured their own ceiling passes --peak-tflops instead."""
import torch

from ..settings import amp_dtype

# Matched in order against torch.cuda.get_device_name(), so the specific names
# (PCIe, NVL) come before the generic one.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),       # SXM5 ("NVIDIA H100 80GB HBM3")
    ("H200", 989.4),
    ("GH200", 989.4),
    ("H800", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.1),
    ("RTX 4090", 165.2),
)


def spec_peak_tflops(device_name: str, precision: str) -> float | None:
    """Datasheet peak for this GPU at a resolved precision (the 16-bit tensor-core figure),
    or None when unknown (CPUs, fp32, GPUs not in the table)."""
    if amp_dtype(precision) is None:
        return None
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in device_name:
            return tflops
    return None


def measure_matmul_tflops(device: torch.device, dtype=torch.bfloat16, n: int = 8192, reps: int = 20) -> float:
    """Achieved TFLOP/s of an n x n x n matmul on a CUDA device (CUDA-event timed): the
    practical ceiling, reported beside the datasheet figure."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        a @ b
    end.record()
    torch.cuda.synchronize(device)
    seconds = start.elapsed_time(end) / 1e3 / reps
    return 2 * n**3 / seconds / 1e12
