"""Where and in what precision a run computes: the one place a `--device` value becomes
a torch.device and a `--precision` value becomes an autocast dtype."""
import contextlib

import torch

from .choices import check_choice
from .errors import ConfigError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def resolve_device(name) -> torch.device:
    """auto (the GPU when there is one), cpu, cuda or cuda:N -> torch.device. A CUDA device
    always carries its index, so every later `.to(device)` and kernel launch agree."""
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {name!r} (use auto, cpu, cuda or cuda:N)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name} was asked for but no CUDA GPU is visible")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        elif device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible")
    return device


def resolve_precision(name: str | None, device: torch.device) -> str:
    """auto/None -> bf16 on CUDA, fp32 on the CPU. fp16 needs CUDA (and a GradScaler,
    which every fastmae loop that trains in fp16 uses)."""
    name = check_choice("precision", name or "auto")
    if name == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise ConfigError("--precision fp16 needs a CUDA GPU; use bf16 or fp32 on the CPU")
    return name


def amp_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision; None for plain fp32."""
    return AMP_DTYPES[precision]


def activation_dtype(precision: str) -> torch.dtype:
    return AMP_DTYPES[precision] or torch.float32


def autocast(device: torch.device, precision: str):
    """The autocast context of a resolved precision (a no-op for fp32)."""
    dtype = AMP_DTYPES[precision]
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
