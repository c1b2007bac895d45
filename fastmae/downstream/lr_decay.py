"""Layer-wise learning-rate decay (BEiT, used by the official MAE fine-tuning): the head
trains at the full rate, block i at decay**(num_layers - i), the patch embedding, cls
token and position embedding at decay**num_layers. Biases, norms (every 1-D tensor) and
the tokens/position embedding get no weight decay."""
import torch.nn as nn

from ..settings import ConfigError


def layer_id(name: str, num_layers: int) -> int:
    """0 for the embedding, i+1 for blocks.i, num_layers for everything after (norm, head).
    num_layers = number of blocks + 1."""
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers


def param_groups_lrd(model: nn.Module, weight_decay: float = 0.05, no_weight_decay_list=(),
                     layer_decay: float = 0.75) -> list[dict]:
    """Optimizer parameter groups, each with an 'lr_scale' the schedule multiplies in."""
    if not 0.0 < layer_decay <= 1.0:
        raise ConfigError(f"layer_decay must be in (0, 1], got {layer_decay}")
    num_layers = len(model.blocks) + 1
    scales = [layer_decay ** (num_layers - i) for i in range(num_layers + 1)]
    groups: dict[str, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim == 1 or name in no_weight_decay_list
        lid = layer_id(name, num_layers)
        key = f"layer_{lid}_{'no_decay' if no_decay else 'decay'}"
        if key not in groups:
            groups[key] = {"lr_scale": scales[lid], "weight_decay": 0.0 if no_decay else weight_decay,
                           "params": [], "names": []}
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return list(groups.values())
