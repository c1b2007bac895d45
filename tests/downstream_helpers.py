"""Tiny models and image folders for the downstream tests (seconds on a CPU)."""
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import fastmae

TINY_MAE = dict(img_size=16, patch_size=4, in_chans=3, embed_dim=32, depth=2, num_heads=4,
                decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2, mlp_ratio=2.0)
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def tiny_mae(**overrides) -> fastmae.MaskedAutoencoderViT:
    return fastmae.MaskedAutoencoderViT(**{**TINY_MAE, "kernels": "torch", **overrides})


def save_checkpoint(model, path) -> Path:
    """A fastmae-style checkpoint: {'model': official keys, 'model_config': ...}."""
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in model.config.items()}
    torch.save({"model": model.state_dict(), "model_config": cfg, "epoch": 0}, path)
    return Path(path)


def make_image(colour, rng, size=20) -> Image.Image:
    base = np.array(colour, dtype=np.float64)
    noise = rng.normal(0, 25, (size, size, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def image_folder(root, per_class=6, classes=("red", "green", "blue"), seed=0, size=20) -> Path:
    """root/<class>/<i>.png, classes told apart by colour."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            make_image(COLOURS[c], rng, size).save(root / c / f"{c}{i:02d}.png")
    return root


def split_folder(root, train=6, val=3, seed=0) -> Path:
    image_folder(Path(root) / "train", train, seed=seed)
    image_folder(Path(root) / "val", val, seed=seed + 1)
    return Path(root)
