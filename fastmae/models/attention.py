"""Attention backends: flash-attn, PyTorch SDPA, and explicit softmax ("math").

`auto` picks by measurement, not by a fixed order. On CUDA, the first time a shape
(device, dtype, heads, head size, sequence length) is seen, every candidate that can run
it (flash-attn / FA4 when installed, SDPA pinned to its cuDNN, flash and memory-efficient
kernels) is timed for forward + backward with CUDA events, and the fastest is kept for
that shape. On the CPU auto is SDPA. The choice is a plain string, so torch.compile traces
it as a constant: a pinned SDPA kernel runs under `torch.nn.attention.sdpa_kernel`, which
the compiler honours inside the graph. A backend asked for by name that cannot run raises
BackendUnavailable: a user who asks for flash must know when they are not getting it."""
import importlib.util
import statistics
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..settings import ATTENTION, BackendUnavailable, ConfigError, check_choice


@dataclass(frozen=True)
class FlashEntry:
    name: str
    fn: Callable  # (qkv (B, N, 3, H, hd)) -> (B, N, H, hd)
    min_capability: tuple[int, int]
    max_capability: tuple[int, int] | None
    head_dims: tuple[int, ...] | None  # None: any multiple of 8 up to 256

    def supports(self, capability: tuple[int, int], head_dim: int | None) -> str | None:
        """None when this entry can run, else why not."""
        if capability < self.min_capability or (
                self.max_capability is not None and capability > self.max_capability):
            return (f"{self.name} does not run on compute capability {capability[0]}.{capability[1]}")
        if head_dim is not None:
            ok = head_dim in self.head_dims if self.head_dims else head_dim <= 256
            if not ok:
                return f"{self.name} does not support head size {head_dim}"
        return None


def _find_flash() -> tuple[FlashEntry | None, str]:
    """The installed flash-attn entry point, or None and the reason.

    flash-attn 2 ships flash_attn_qkvpacked_func (Ampere and newer, head size <= 256).
    FA4 (flash-attn-4) ships flash_attn.cute.flash_attn_func(q, k, v, softmax_scale,
    causal, ...) -> (out, lse), for Hopper/Blackwell (capability 9.x-11.x) and head sizes
    64, 96, 128."""
    if importlib.util.find_spec("flash_attn") is None:
        return None, "the flash-attn package is not installed"
    try:
        from flash_attn import flash_attn_qkvpacked_func
        return FlashEntry("flash-attn", flash_attn_qkvpacked_func, (8, 0), None, None), ""
    except (ImportError, OSError, RuntimeError) as e:  # a broken CUDA extension, or FA4 only
        fa2_error = f"{type(e).__name__}: {e}"
    try:
        from flash_attn.cute import flash_attn_func
    except (ImportError, OSError, RuntimeError) as e:
        return None, f"flash-attn is installed but does not import ({fa2_error}; {type(e).__name__}: {e})"

    def fa4_qkvpacked(qkv):
        q, k, v = qkv.unbind(dim=2)
        out, _lse = flash_attn_func(q, k, v)
        return out

    return FlashEntry("flash-attn-4", fa4_qkvpacked, (9, 0), (11, 9), (64, 96, 128)), ""


_FLASH, _FLASH_MISSING = _find_flash()


def flash_available() -> bool:
    return _FLASH is not None


def check_backend(name: str) -> str:
    check_choice("attn", name)
    if name == "flash" and _FLASH is None:
        raise BackendUnavailable(f"--attn flash was asked for but {_FLASH_MISSING} "
                                 "(pip install flash-attn, or use --attn sdpa)")
    return name


def _flash_unfit(x: torch.Tensor, head_dim: int | None) -> str | None:
    """None when flash-attn can run on x, else why not."""
    if _FLASH is None:
        return _FLASH_MISSING
    if not x.is_cuda or x.dtype not in (torch.float16, torch.bfloat16):
        return f"flash attention needs fp16/bf16 CUDA tensors, got {x.dtype} on {x.device.type}"
    return _FLASH.supports(torch.cuda.get_device_capability(x.device), head_dim)


# SDPA pinned to one of its kernels: what auto may choose besides flash-attn and plain SDPA.
SDPA_PINNED = {"sdpa-cudnn": SDPBackend.CUDNN_ATTENTION, "sdpa-flash": SDPBackend.FLASH_ATTENTION,
               "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION}
RESOLVED = tuple(n for n in ATTENTION if n != "auto") + tuple(SDPA_PINNED)

# auto's choice per shape key (device, dtype, heads, head size, sequence length)
_AUTO: dict[tuple, str] = {}


def auto_key(x: torch.Tensor, num_heads: int, seq_len: int) -> tuple:
    head_dim = x.shape[-1] // (3 * num_heads)
    return (str(x.device), x.dtype, num_heads, head_dim, seq_len)


def cuda_timer(fn: Callable[[], None], warmup: int = 2, reps: int = 5) -> float:
    """Median milliseconds of fn() (forward + backward) with CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def candidates(x: torch.Tensor, num_heads: int) -> list[str]:
    """The backends auto may time for x = qkv (B, N, 3*D)."""
    head_dim = x.shape[-1] // (3 * num_heads)
    names = ["flash"] if _flash_unfit(x, head_dim) is None else []
    return names + list(SDPA_PINNED)


def choose(runs: dict[str, Callable[[], None]], timer: Callable) -> tuple[str | None, dict]:
    """The fastest of `runs` by `timer` (name -> callable; timer(callable) -> ms) and every
    timing. A candidate that fails (a kernel that does not support the shape, dtype or GPU)
    is left out and its error recorded."""
    timings = {}
    for name, run in runs.items():
        try:
            timings[name] = float(timer(run))
        except (RuntimeError, ValueError, BackendUnavailable) as e:
            timings[name] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}" if str(e) \
                else type(e).__name__
    ok = {n: t for n, t in timings.items() if isinstance(t, float)}
    return (min(ok, key=ok.get) if ok else None), timings


def measure_auto(x: torch.Tensor, num_heads: int, seq_len: int, batch: int = 1,
                 timer: Callable | None = None) -> str:
    """auto's backend for this shape, timed once and cached; "sdpa" when nothing else runs."""
    key = auto_key(x, num_heads, seq_len)
    if key in _AUTO:
        return _AUTO[key]
    d = x.shape[-1]
    qkv = torch.randn(batch, seq_len, d, device=x.device, dtype=x.dtype, requires_grad=True)
    grad = torch.randn(batch, seq_len, d // 3, device=x.device, dtype=x.dtype)

    def run_of(name):
        def run():
            qkv.grad = None
            attention(qkv, num_heads, name).backward(grad)
        run.backend = name
        return run

    with torch.enable_grad():  # also when first seen under no_grad (evaluation)
        best, _ = choose({n: run_of(n) for n in candidates(x, num_heads)}, timer or cuda_timer)
    _AUTO[key] = best or "sdpa"
    return _AUTO[key]


def resolve(name: str, x: torch.Tensor, num_heads: int | None = None, seq_len: int | None = None,
            batch: int = 1) -> str:
    """The backend that will run for x = qkv (B, N, 3*D) under the requested name. For auto
    on CUDA: the measured choice for (heads, head size, seq_len); seq_len defaults to N."""
    check_backend(name)
    head_dim = x.shape[-1] // (3 * num_heads) if num_heads else None
    if name == "auto":
        if not x.is_cuda or not num_heads:
            return "flash" if _flash_unfit(x, head_dim) is None else "sdpa"
        seq_len = x.shape[1] if seq_len is None else seq_len
        key = auto_key(x, num_heads, seq_len)
        if key in _AUTO:
            return _AUTO[key]
        if torch.compiler.is_compiling():
            # Nothing can be timed while tracing; the loop and the bench time every shape of
            # a run before it starts (MaskedAutoencoderViT.backends), so this is a new shape.
            return "sdpa"
        return measure_auto(x, num_heads, seq_len, batch=max(1, min(x.shape[0], 64)))
    if name == "flash":
        why = _flash_unfit(x, head_dim)
        if why is not None:
            raise BackendUnavailable(f"--attn flash cannot run: {why} (use --precision bf16 on a "
                                     "supported GPU, or --attn auto/sdpa)")
    return name


def attention(qkv: torch.Tensor, num_heads: int, backend: str) -> torch.Tensor:
    """qkv (B, N, 3*D) from the fused projection -> (B, N, D); backend as from resolve."""
    B, N, three_d = qkv.shape
    hd = three_d // (3 * num_heads)
    qkv = qkv.reshape(B, N, 3, num_heads, hd)
    if backend == "flash":
        return _FLASH.fn(qkv).reshape(B, N, num_heads * hd)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, hd)
    if backend == "sdpa":
        out = F.scaled_dot_product_attention(q, k, v)
    elif backend in SDPA_PINNED:
        with sdpa_kernel(SDPA_PINNED[backend]):
            out = F.scaled_dot_product_attention(q, k, v)
    elif backend == "math":
        attn = (q * hd**-0.5) @ k.transpose(-2, -1)
        out = attn.softmax(dim=-1) @ v
    else:
        raise ConfigError(f"attention backend {backend!r} is not a resolved backend "
                          f"({', '.join(RESOLVED)})")
    return out.transpose(1, 2).reshape(B, N, num_heads * hd)
