"""AdamW as in the MAE recipe: betas (0.9, 0.95); no weight decay on biases, norms,
tokens and position embeddings (every 1-D parameter, plus the named tokens)."""
import torch

NO_DECAY_NAMES = ("cls_token", "mask_token", "pos_embed", "decoder_pos_embed")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        short = name.split(".")[-1]
        (no_decay if p.ndim <= 1 or short in NO_DECAY_NAMES else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, device: torch.device):
    groups = param_groups(model, weight_decay)
    fused = device.type == "cuda"  # one kernel for all parameters; not available on CPU
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=fused)
