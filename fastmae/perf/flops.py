"""Counted matmul FLOPs of one MAE pretraining step, per image.

Only matrix multiplies are counted, each as 2*m*n*k (one multiply and one add per
term); layer norms, GELU, softmax, the loss and the optimizer are left out, as is
usual for MFU. Notation: image H x W, patch p, C channels, L = (H/p)(W/p) patches,
K = int(L * (1 - mask_ratio)) visible patches (the official len_keep), P = p*p*C
values per patch, encoder width D with MLP hidden h = int(D * mlp_ratio), decoder
width d with hidden h_d = int(d * mlp_ratio).

    block(N, D, h) = 2*N*D*3D  (qkv) + 2*N*N*D (Q K^T) + 2*N*N*D (A V)
                   + 2*N*D*D   (proj) + 2*N*D*h + 2*N*h*D (MLP fc1, fc2)

    forward = 2*K*P*D                         patch embedding of the visible patches
            + depth * block(1+K, D, h)        encoder on cls + visible tokens
            + 2*(1+K)*D*d                     decoder_embed
            + decoder_depth * block(1+L, d, h_d)  decoder on cls + all tokens
            + 2*(1+L)*d*P                     decoder_pred (run on all 1+L tokens)

    train step = 3 * forward                  (backward = 2x forward: grads of inputs
                                               and of weights)

This is the work the MAE step needs, so every contender is charged the same
count: an implementation that embeds all L patches (the reference) does more
arithmetic but is not credited for it. ViT-B/16 at 224 px, mask 0.75 (L=196,
K=49): patch embedding + encoder 8.64 GFLOP, decoder_embed + decoder + decoder_pred
10.75 GFLOP, forward 19.39 GFLOP, train step 58.2 GFLOP per image.
"""
from ..models.mae import to_pair
from ..settings import ConfigError
from ..models.registry import model_config

# Defaults of MaskedAutoencoderViT that the registry entries leave out.
_DEFAULTS = dict(img_size=224, in_chans=3, mlp_ratio=4.0)


def block_flops(tokens: int, dim: int, hidden: int) -> int:
    """One pre-norm ViT block (attention + MLP) on `tokens` tokens of width `dim`."""
    n, d = tokens, dim
    qkv = 2 * n * d * 3 * d
    scores = 2 * n * n * d
    mix = 2 * n * n * d
    proj = 2 * n * d * d
    mlp = 2 * n * d * hidden + 2 * n * hidden * d
    return qkv + scores + mix + proj + mlp


def forward_flops(config: dict, mask_ratio: float) -> dict[str, int]:
    """FLOPs of one image's forward pass, by part, and their sum under "forward".
    `config` holds MaskedAutoencoderViT keyword arguments (missing ones take its defaults)."""
    c = {**_DEFAULTS, **config}
    if not 0.0 <= mask_ratio < 1.0:
        raise ConfigError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    (H, W), p = to_pair(c["img_size"]), int(c["patch_size"])
    L = (H // p) * (W // p)
    K = int(L * (1 - mask_ratio))
    P = p * p * int(c["in_chans"])
    D, d = int(c["embed_dim"]), int(c["decoder_embed_dim"])
    h, h_d = int(D * c["mlp_ratio"]), int(d * c["mlp_ratio"])
    parts = {
        "patch_embed": 2 * K * P * D,
        "encoder": int(c["depth"]) * block_flops(1 + K, D, h),
        "decoder_embed": 2 * (1 + K) * D * d,
        "decoder": int(c["decoder_depth"]) * block_flops(1 + L, d, h_d),
        "decoder_pred": 2 * (1 + L) * d * P,
    }
    parts["forward"] = sum(parts.values())
    return parts


def train_flops_per_image(config: dict, mask_ratio: float) -> int:
    """FLOPs of one image's training step (forward + backward) = 3 x forward."""
    return 3 * forward_flops(config, mask_ratio)["forward"]


def named_config(name: str, img_size=224) -> dict:
    """MaskedAutoencoderViT arguments of a registry model at an image size."""
    return {**_DEFAULTS, **model_config(name), "img_size": to_pair(img_size)}
