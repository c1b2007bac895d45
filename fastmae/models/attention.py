"""Attention backends: flash-attn, PyTorch SDPA, and explicit softmax ("math").

`auto` picks flash-attn when it is installed and can run the call (fp16/bf16 CUDA tensors,
a GPU and head size the installed version supports), else SDPA. A backend asked for by
name that cannot run raises BackendUnavailable: a user who asks for flash must know when
they are not getting it."""
import importlib.util
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..settings import BackendUnavailable, ConfigError, check_choice


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


def resolve(name: str, x: torch.Tensor, num_heads: int | None = None) -> str:
    """The backend that will run for x = qkv (B, N, 3*D) under the requested name."""
    check_backend(name)
    head_dim = x.shape[-1] // (3 * num_heads) if num_heads else None
    if name == "auto":
        return "flash" if _flash_unfit(x, head_dim) is None else "sdpa"
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
    elif backend == "math":
        attn = (q * hd**-0.5) @ k.transpose(-2, -1)
        out = attn.softmax(dim=-1) @ v
    else:
        raise ConfigError(f"attention backend {backend!r} is not a resolved backend "
                          "(flash, sdpa or math)")
    return out.transpose(1, 2).reshape(B, N, num_heads * hd)
