"""Op benchmarks: `pytest benchmarks/ --benchmark-only`. On a GPU the Triton kernels must
be compiled, so TRITON_INTERPRET is never set here (tests/conftest.py sets it for the
unit tests, which this directory does not load); without a GPU only the torch path runs,
at small sizes."""
import os

import pytest
import torch


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def impl_ready(device):
    """Skip a Triton contender that would not be a compiled kernel on a GPU."""
    def check(impl: str):
        if impl != "triton":
            return
        if device.type != "cuda":
            pytest.skip("Triton kernels need a CUDA GPU (the interpreter is not a benchmark)")
        if os.environ.get("TRITON_INTERPRET", "0") == "1":
            pytest.skip("TRITON_INTERPRET=1 would time the interpreter; unset it")
    return check


@pytest.fixture(scope="session")
def copy_gbps(device) -> float | None:
    """Achieved device-to-device copy bandwidth (read + write of 1 GiB): the practical
    ceiling beside the datasheet figure."""
    if device.type != "cuda":
        return None
    import triton.testing
    src = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=25, rep=100, return_mode="median")
    return 2 * src.numel() / (ms * 1e-3) / 1e9
