"""Mixup and CutMix for fine-tuning (timm's batch mode, written in torch): each batch is
mixed with itself reversed, with one lambda ~ Beta(alpha, alpha) per batch, and the
targets become the same mix of label-smoothed one-hot vectors."""
import numpy as np
import torch
import torch.nn.functional as F

from ..settings import ConfigError


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    off = smoothing / num_classes
    out = torch.full((labels.shape[0], num_classes), off, device=labels.device)
    return out.scatter_(1, labels.view(-1, 1).long(), 1.0 - smoothing + off)


def soft_target_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


class Mixup:
    def __init__(self, num_classes: int, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
                 prob: float = 1.0, switch_prob: float = 0.5, smoothing: float = 0.1, seed: int = 0):
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ConfigError("--mixup and --cutmix must be >= 0")
        if mixup_alpha == 0 and cutmix_alpha == 0:
            raise ConfigError("Mixup needs --mixup > 0 or --cutmix > 0")
        if not 0.0 <= prob <= 1.0 or not 0.0 <= switch_prob <= 1.0:
            raise ConfigError("--mixup-prob and --mixup-switch-prob must be in [0, 1]")
        self.num_classes, self.smoothing = num_classes, smoothing
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.prob, self.switch_prob = prob, switch_prob
        self.rng = np.random.default_rng(seed)

    def _draw(self) -> tuple[float, bool]:
        """(lambda, use_cutmix) for one batch."""
        if self.rng.random() >= self.prob:
            return 1.0, False
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or self.rng.random() < self.switch_prob)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        return float(self.rng.beta(alpha, alpha)), use_cutmix

    def _box(self, lam: float, h: int, w: int) -> tuple[int, int, int, int]:
        ratio = np.sqrt(1.0 - lam)
        ch, cw = int(h * ratio), int(w * ratio)
        cy, cx = int(self.rng.integers(0, h)), int(self.rng.integers(0, w))
        return (max(cy - ch // 2, 0), min(cy + ch // 2, h), max(cx - cw // 2, 0), min(cx + cw // 2, w))

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lam, use_cutmix = self._draw()
        if lam < 1.0:
            if use_cutmix:
                y0, y1, x0, x1 = self._box(lam, x.shape[-2], x.shape[-1])
                x = x.clone()
                x[:, :, y0:y1, x0:x1] = x.flip(0)[:, :, y0:y1, x0:x1]
                lam = 1.0 - (y1 - y0) * (x1 - x0) / (x.shape[-2] * x.shape[-1])  # the true area
            else:
                x = x * lam + x.flip(0) * (1.0 - lam)
        t = smooth_one_hot(y, self.num_classes, self.smoothing)
        return x, t * lam + t.flip(0) * (1.0 - lam)
