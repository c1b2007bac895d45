"""The optimizer recipe of every fastmae loop (pretraining, fine-tuning, the benchmark):
AdamW with betas (0.9, 0.95) as in MAE; no weight decay on biases, norms, tokens and
position embeddings (every 1-D parameter, plus the named tokens); one fused kernel for
all parameters (CUDA and CPU)."""
import torch

NO_DECAY_NAMES = ("cls_token", "mask_token", "pos_embed", "decoder_pos_embed", "dist_token")
BETAS = (0.9, 0.95)


def no_weight_decay(name: str, p: torch.nn.Parameter) -> bool:
    return p.ndim <= 1 or name.split(".")[-1] in NO_DECAY_NAMES


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if no_weight_decay(name, p) else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def fused_supported(device: torch.device) -> bool:
    """Whether this torch has the fused AdamW kernel for `device` (CUDA, and CPU since 2.4)."""
    from torch.optim.optimizer import _get_fused_kernels_supported_devices
    return device.type in _get_fused_kernels_supported_devices()


def adamw(groups: list[dict], lr: float, device: torch.device, betas=BETAS) -> torch.optim.AdamW:
    """AdamW over prepared param groups, fused (one kernel) where torch has the kernel. The
    fused kernel also takes a device-side `found_inf` flag, which is how the training step
    skips a non-finite step without reading the loss back to the host."""
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused_supported(device))


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, device: torch.device):
    return adamw(param_groups(model, weight_decay), lr, device)
