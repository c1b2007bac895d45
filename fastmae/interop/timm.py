"""fastmae / official MAE encoder -> timm VisionTransformer.

The MAE encoder already uses timm's names (patch_embed.proj, blocks.N.{norm1, attn.qkv,
attn.proj, norm2, mlp.fc1, mlp.fc2}, norm) and timm's layout (cls token first, a
(1, 1+L, D) pos_embed covering it), so the conversion drops the decoder and, for
global_pool="avg", moves the final norm to where timm's pooled model keeps it (fc_norm)."""
from collections.abc import Mapping
from functools import partial

import torch

from ..settings import CheckpointError, ConfigError
from . import hf
from .statedict import is_decoder_key

POOLS = ("token", "avg")


def _state_dict(source) -> dict:
    from .weights import Checkpoint
    if isinstance(source, Checkpoint):
        return dict(source.state_dict)
    if isinstance(source, torch.nn.Module):
        return dict(source.state_dict())
    if isinstance(source, Mapping):
        return dict(source)
    raise ConfigError(f"to_timm_vit takes a state dict, a model or a Checkpoint, got {type(source).__name__}")


def to_timm_vit(state_dict, global_pool: str = "token") -> dict:
    """Encoder state dict that timm's VisionTransformer(class_token=True,
    global_pool=global_pool, norm_layer=LayerNorm with the model's eps) loads with only
    head.* missing."""
    if global_pool not in POOLS:
        raise ConfigError(f"unknown global_pool {global_pool!r}; choose one of {', '.join(POOLS)}")
    sd = _state_dict(state_dict)
    if hf.is_hf_state_dict(sd):
        sd = hf.hf_to_official(sd)
    need = [k for k in ("cls_token", "pos_embed", "patch_embed.proj.weight", "norm.weight") if k not in sd]
    if need:
        raise CheckpointError(f"not an MAE encoder state dict: missing {', '.join(need)}")
    out = {k: v for k, v in sd.items() if not is_decoder_key(k)}
    if global_pool == "avg":
        out = {("fc_" + k if k.startswith("norm.") else k): v for k, v in out.items()}
    return out


def timm_vit_kwargs(model_config: Mapping, global_pool: str = "token", num_classes: int = 0) -> dict:
    """Keyword arguments of timm.models.vision_transformer.VisionTransformer matching a
    fastmae model config (e.g. `model.config`)."""
    if global_pool not in POOLS:
        raise ConfigError(f"unknown global_pool {global_pool!r}; choose one of {', '.join(POOLS)}")
    cfg = dict(model_config)
    img = cfg.get("img_size", 224)
    return dict(img_size=tuple(img) if isinstance(img, (list, tuple)) else img,
                patch_size=cfg.get("patch_size", 16), in_chans=cfg.get("in_chans", 3),
                embed_dim=cfg.get("embed_dim", 1024), depth=cfg.get("depth", 24),
                num_heads=cfg.get("num_heads", 16), mlp_ratio=cfg.get("mlp_ratio", 4.0),
                qkv_bias=True, class_token=True, global_pool=global_pool, num_classes=num_classes,
                norm_layer=partial(torch.nn.LayerNorm, eps=float(cfg.get("norm_eps", 1e-6))))
