"""ViT building blocks with timm's parameter names (so official and timm weights load
by name): PatchEmbed.proj, Block.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}.

The residual stream runs split, as (hidden, residual) with stream = residual + hidden:
each residual add happens inside the LayerNorm after it (ops.add_layer_norm), the last
one inside the final norm (run_blocks), and fc1's bias and GELU run as one op
(ops.bias_gelu). With kernels="torch" the same code runs plain torch ops, in the same
order as the official blocks."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from ..ops import dispatch
from ..settings import ConfigError, check_choice
from . import attention as attn_backends


class PatchEmbed(nn.Module):
    """Holds the patch projection as a conv (official key patch_embed.proj.*). The fast
    model never runs the conv: it applies the same weight as a Linear to gathered patches."""

    def __init__(self, img_size: tuple[int, int], patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid_size = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def linear_weight(self) -> torch.Tensor:
        """The conv weight (D, C, p, p) as a (D, p*p*C) matrix in patchify order (p, q, c)."""
        w = self.proj.weight
        return w.permute(0, 2, 3, 1).reshape(w.shape[0], -1)

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.proj(imgs).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, backend: str = "auto"):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"embed dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.backend = attn_backends.check_backend(backend)
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)
        backend = attn_backends.resolve(self.backend, qkv, self.num_heads)
        return self.proj(attn_backends.attention(qkv, self.num_heads, backend))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, kernels: str = "auto") -> torch.Tensor:
        if self.fc1.bias is not None and dispatch.resolve(kernels, x) == "triton":
            # fc1 as a bare matmul, then bias + GELU in one pass that saves only its input.
            return self.fc2(ops.bias_gelu(F.linear(x, self.fc1.weight), self.fc1.bias, "triton"))
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth per sample (used by fine-tuning; identity at rate 0 and in eval)."""

    def __init__(self, rate: float = 0.0):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)


def add_norm(norm: nn.LayerNorm, x: torch.Tensor, residual: torch.Tensor | None, kernels: str):
    """(norm(x + residual), x + residual), the add fused into the norm."""
    return ops.add_layer_norm(x, residual, norm.weight, norm.bias, norm.eps, kernels)


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, norm_eps: float = 1e-6,
                 attn: str = "auto", drop_path: float = 0.0, kernels: str = "auto"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, attn)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)
        self.kernels = check_choice("kernels", kernels)  # for blk(x); run_blocks passes its own

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """timm's block: x + attn(norm1(x)), then + mlp(norm2(.))."""
        hidden, residual = self.forward_split(x, None, self.kernels)
        return residual + hidden

    def forward_split(self, hidden: torch.Tensor, residual: torch.Tensor | None, kernels: str):
        """One block on the split stream residual + hidden (residual None: the stream is
        hidden). Returns the stream after the block, split as (this block's MLP branch,
        the stream before it). DropPath scales each branch before its add, as in timm."""
        y, residual = add_norm(self.norm1, hidden, residual, kernels)
        y, residual = add_norm(self.norm2, self.drop_path(self.attn(y)), residual, kernels)
        return self.drop_path(self.mlp(y, kernels)), residual


def run_blocks(blocks, x: torch.Tensor, norm: nn.LayerNorm, kernels: str) -> torch.Tensor:
    """norm(blocks(x)) with every residual add fused into the LayerNorm that follows it.
    Under autocast the output is in the autocast dtype with the Triton kernels (no fp32
    copy) and in fp32 with kernels="torch" (nn.LayerNorm's autocast rule)."""
    hidden, residual = x, None
    for blk in blocks:
        hidden, residual = blk.forward_split(hidden, residual, kernels)
    return add_norm(norm, hidden, residual, kernels)[0]


def stream_after(blocks, x: torch.Tensor, depth: int, kernels: str) -> torch.Tensor:
    """The residual stream (no final norm) after the first `depth` blocks: intermediate
    features for feature extraction (anomaly scoring)."""
    hidden, residual = x, None
    for blk in list(blocks)[:depth]:
        hidden, residual = blk.forward_split(hidden, residual, kernels)
    return hidden if residual is None else residual + hidden


def init_weights(module: nn.Module) -> None:
    """Official MAE init: xavier-uniform Linear with zero bias, LayerNorm (1, 0)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
