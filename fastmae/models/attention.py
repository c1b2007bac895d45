"""Attention backends: flash-attn, PyTorch SDPA, and explicit softmax ("math").

`auto` picks flash-attn when it is installed and the tensors are fp16/bf16 on CUDA,
else SDPA. A backend asked for by name that cannot run raises BackendUnavailable:
a user who asks for flash must know when they are not getting it."""
import importlib.util

import torch
import torch.nn.functional as F

from ..errors import BackendUnavailable, ConfigError

BACKENDS = ("auto", "flash", "sdpa", "math")


def _find_flash():
    """The installed flash-attn entry point as (name, fn), or None.
    flash-attn 2/3 ship flash_attn_qkvpacked_func; FA4 ships flash_attn.cute."""
    if importlib.util.find_spec("flash_attn") is None:
        return None
    try:
        from flash_attn import flash_attn_qkvpacked_func
        return "flash-attn", flash_attn_qkvpacked_func
    except ImportError:
        pass
    try:
        from flash_attn.cute import flash_attn_func
    except ImportError:
        return None

    def fa4_qkvpacked(qkv, dropout_p=0.0, softmax_scale=None, causal=False):
        q, k, v = qkv.unbind(dim=2)
        out = flash_attn_func(q, k, v, softmax_scale=softmax_scale, causal=causal)
        return out[0] if isinstance(out, tuple) else out

    return "flash-attn-4", fa4_qkvpacked


_FLASH = _find_flash()


def flash_available() -> bool:
    return _FLASH is not None


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ConfigError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "flash" and _FLASH is None:
        raise BackendUnavailable("--attn flash was asked for but the flash-attn package is not "
                                 "installed (pip install flash-attn, or use --attn sdpa)")
    return name


def resolve(name: str, x: torch.Tensor) -> str:
    """The backend that will run for tensor x under the requested name."""
    if name == "auto":
        ok = _FLASH is not None and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)
        return "flash" if ok else "sdpa"
    if name == "flash" and not (x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)):
        raise BackendUnavailable(f"flash attention needs fp16/bf16 CUDA tensors, got {x.dtype} on "
                                 f"{x.device.type} (use --precision bf16 on a GPU, or --attn sdpa)")
    return check_backend(name)


def attention(qkv: torch.Tensor, num_heads: int, backend: str) -> torch.Tensor:
    """qkv (B, N, 3*D) from the fused projection -> (B, N, D)."""
    B, N, three_d = qkv.shape
    hd = three_d // (3 * num_heads)
    qkv = qkv.reshape(B, N, 3, num_heads, hd)
    if backend == "flash":
        return _FLASH[1](qkv).reshape(B, N, num_heads * hd)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, hd)
    if backend == "sdpa":
        out = F.scaled_dot_product_attention(q, k, v)
    else:
        attn = (q * hd**-0.5) @ k.transpose(-2, -1)
        out = attn.softmax(dim=-1) @ v
    return out.transpose(1, 2).reshape(B, N, num_heads * hd)
