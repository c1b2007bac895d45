"""What an MAE state dict (official key names) says about its model: the constructor
config read off the tensor shapes, and strict loading that tells the user exactly which
keys do not fit. An encoder-only state dict (the official released pretraining weights)
loads with the decoder left at its initialisation."""
import inspect
import math
from collections.abc import Mapping

import torch

from ..settings import CheckpointError, ConfigError
from ..models.mae import MaskedAutoencoderViT
from ..models.registry import CONFIGS

DECODER_PARTS = ("decoder_embed.", "decoder_blocks.", "decoder_norm.", "decoder_pred.")
DECODER_TENSORS = ("mask_token", "decoder_pos_embed")
# The official defaults, used for the decoder of an encoder-only checkpoint that matches
# no named size.
OFFICIAL_DECODER = dict(decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16)


def is_decoder_key(key: str) -> bool:
    return key.startswith(DECODER_PARTS) or key in DECODER_TENSORS


def constructor_args() -> set[str]:
    params = inspect.signature(MaskedAutoencoderViT.__init__).parameters
    return {name for name in params if name != "self"}


def check_overrides(overrides: Mapping) -> None:
    unknown = sorted(set(overrides) - constructor_args())
    if unknown:
        raise ConfigError(f"unknown model argument(s) {', '.join(unknown)}; MaskedAutoencoderViT "
                          f"takes {', '.join(sorted(constructor_args()))}")


def num_blocks(state_dict: Mapping, prefix: str) -> int:
    idx = {int(k[len(prefix):].split(".", 1)[0]) for k in state_dict
           if k.startswith(prefix) and k[len(prefix):].split(".", 1)[0].isdigit()}
    if idx and idx != set(range(max(idx) + 1)):
        raise CheckpointError(f"block indices under {prefix!r} are not contiguous: {sorted(idx)}")
    return len(idx)


def _heads(dim: int, what: str, named: int | None) -> int:
    """A named size's head count, else the ViT convention of 64-dim heads. The head count
    leaves no trace in the weights, so a guess that cannot be made is an error."""
    if named is not None:
        return named
    if dim % 64 == 0:
        return dim // 64
    raise CheckpointError(f"cannot infer {what} for width {dim} (matches no named size and is not "
                          f"a multiple of 64); pass {what}=... explicitly")


def infer_model_config(state_dict: Mapping, model_config: Mapping | None = None, **overrides) -> dict:
    """MaskedAutoencoderViT kwargs for a state dict: model_config when the checkpoint stored
    one, else read from the shapes (patch size, channels, widths, depths, grid, MLP ratio);
    head counts from the named size with the same (embed_dim, depth, patch_size), else
    64-dim heads. Keyword overrides win over both."""
    check_overrides(overrides)
    if model_config is not None:
        cfg = dict(model_config)
        check_overrides(cfg)
        return {**cfg, **overrides}

    w = state_dict.get("patch_embed.proj.weight")
    if w is None or w.ndim != 4 or w.shape[2] != w.shape[3]:
        keys = ", ".join(list(state_dict)[:6])
        raise CheckpointError("not a ViT/MAE state dict: no 4-D square patch_embed.proj.weight "
                              f"(first keys: {keys})")
    embed_dim, in_chans, patch = int(w.shape[0]), int(w.shape[1]), int(w.shape[2])
    depth = num_blocks(state_dict, "blocks.")
    if depth == 0:
        raise CheckpointError("not a ViT/MAE state dict: no blocks.N.* keys")
    fc1 = state_dict.get("blocks.0.mlp.fc1.weight")
    if fc1 is None:
        raise CheckpointError("not a ViT/MAE state dict: no blocks.0.mlp.fc1.weight")
    mlp_ratio = fc1.shape[0] / embed_dim

    cfg = dict(patch_size=patch, in_chans=in_chans, embed_dim=embed_dim, depth=depth,
               mlp_ratio=mlp_ratio)
    if "img_size" not in overrides:
        pos = state_dict.get("pos_embed")
        if pos is None:
            raise CheckpointError("the state dict has no pos_embed to read the image size from; "
                                  "pass img_size=...")
        num_patches = pos.shape[1] - 1
        side = math.isqrt(num_patches)
        if side * side != num_patches:
            raise CheckpointError(f"pos_embed holds {num_patches} patches, not a square grid; pass "
                                  "img_size=(H, W)")
        cfg["img_size"] = side * patch

    named = next((c for c in CONFIGS.values() if (c["embed_dim"], c["depth"], c["patch_size"])
                  == (embed_dim, depth, patch)), None)
    if "num_heads" not in overrides:
        cfg["num_heads"] = _heads(embed_dim, "num_heads", named and named["num_heads"])

    dec = state_dict.get("decoder_embed.weight")
    if dec is not None:
        dec_dim = int(dec.shape[0])
        cfg["decoder_embed_dim"] = dec_dim
        cfg["decoder_depth"] = num_blocks(state_dict, "decoder_blocks.")
        dfc1 = state_dict.get("decoder_blocks.0.mlp.fc1.weight")
        if dfc1 is not None and dfc1.shape[0] != int(dec_dim * mlp_ratio):
            raise CheckpointError(f"the decoder MLP ratio ({dfc1.shape[0] / dec_dim:g}) differs from "
                                  f"the encoder's ({mlp_ratio:g}); fastmae uses one mlp_ratio for both")
        if "decoder_num_heads" not in overrides:
            same = [c["decoder_num_heads"] for c in ([named] if named else []) + list(CONFIGS.values())
                    if c["decoder_embed_dim"] == dec_dim]
            cfg["decoder_num_heads"] = _heads(dec_dim, "decoder_num_heads", same[0] if same else None)
    else:
        source = named or OFFICIAL_DECODER
        cfg.update({k: source[k] for k in OFFICIAL_DECODER})
    return {**cfg, **overrides}


def load_weights(model: torch.nn.Module, state_dict: Mapping, where: str) -> bool:
    """Strict load, except that a state dict with no decoder at all leaves the decoder at
    its initialisation. Returns True when the decoder came from the state dict."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [f"{k} {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
             for k in state_dict if k in own and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    has_decoder = any(is_decoder_key(k) for k in state_dict)
    if not has_decoder:
        missing = [k for k in missing if not is_decoder_key(k)]
    if missing or unexpected or wrong:
        parts = []
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
                parts.append(f"{title}: {shown}")
        raise CheckpointError(f"{where} does not fit the model; " + "; ".join(parts))
    bad = [k for k, v in state_dict.items() if not torch.is_floating_point(v)]
    if bad:
        raise CheckpointError(f"{where}: non-floating-point weights for {', '.join(bad[:8])}")
    model.load_state_dict(state_dict, strict=False)
    return has_decoder
