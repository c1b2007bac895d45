"""Frozen-encoder features of many images: no masking, no gradient, batched."""
import torch

from ..settings import autocast
from .classifier import VisionTransformer
from .pretrained import build_classifier


def frozen_encoder(checkpoint, img_size: int | None = None, attn: str = "auto") -> VisionTransformer:
    """The checkpoint's encoder with its final norm and no head, in eval mode, frozen."""
    model, _ = build_classifier(0, checkpoint=checkpoint, img_size=img_size, global_pool=False,
                                attn=attn)
    model.eval()
    model.requires_grad_(False)
    return model


@torch.no_grad()
def extract(model: VisionTransformer, batches, pool: str = "cls", device=None, precision: str = "fp32"):
    """Features (N, D) float32 on the CPU, and labels (N,) int64 when the batches are
    (images, labels) pairs (else None). `precision` is resolved (settings.resolve_precision)."""
    device = device or next(model.parameters()).device
    feats, labels = [], []
    for batch in batches:
        imgs, y = batch if isinstance(batch, (tuple, list)) else (batch, None)
        with autocast(device, precision):
            f = model.features(imgs.to(device, non_blocking=True), pool)
        feats.append(f.float().cpu())
        if y is not None:
            labels.append(y.cpu().long())
    if not feats:
        return torch.zeros(0, model.embed_dim), None
    return torch.cat(feats), (torch.cat(labels) if labels else None)
