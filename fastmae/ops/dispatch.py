"""Which implementation an op runs: Triton on CUDA tensors (and on CPU tensors when
TRITON_INTERPRET=1, which is how the tests run the kernels), torch otherwise.

`kernels="torch"` forces the torch implementation (for comparison); `kernels="triton"`
on a tensor the kernels cannot run on raises rather than silently running torch."""
import collections
import importlib.util
import os

import torch

from ..settings import BackendUnavailable, check_choice

# Per-op count of how often each implementation ran: lets tests (and curious users)
# see that the Triton kernel really executed.
calls: collections.Counter = collections.Counter()


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def check_kernels(name: str) -> str:
    return check_choice("kernels", name)


def resolve(name: str, x: torch.Tensor) -> str:
    """'triton' or 'torch' for the requested kernels mode on tensor x."""
    check_kernels(name)
    if name == "torch":
        return "torch"
    runnable = triton_available() and (x.is_cuda or (interpreting() and x.device.type == "cpu"))
    if runnable:
        return "triton"
    if name == "triton":
        why = "triton is not installed" if not triton_available() else \
            f"Triton kernels need CUDA tensors (got {x.device.type}; set TRITON_INTERPRET=1 to " \
            "run them in the interpreter on CPU)"
        raise BackendUnavailable(f"--kernels triton cannot run: {why}")
    return "torch"


def record(op: str, impl: str) -> None:
    """Count a call. Not while torch.compile traces: a counter bumped in traced code becomes a
    guard on its value, so every call would recompile the graph (and past the recompile limit,
    run eagerly). The Triton path counts inside its custom ops, whose bodies run in compiled
    graphs too; the torch path is counted in eager code only."""
    if not torch.compiler.is_compiling():
        calls[f"{op}:{impl}"] += 1


def reads_values(t: torch.Tensor) -> bool:
    """Whether an input check may read t's values: on CPU only (on CUDA it would sync the
    device) and never while torch.compile traces (it would break the graph)."""
    return not t.is_cuda and not torch.compiler.is_compiling()
