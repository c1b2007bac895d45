"""The built-in dataset: SYNTHETIC 64x64 pictures of 10 shape classes (circle, ring, square,
frame, triangle, star, cross, crescent, bar, ell) drawn with random colour, size, position and
rotation on random textured backgrounds with clutter and noise. The class is the object's
shape and nothing else, so a model has to learn shape to tell the classes apart. Generated
once, deterministically, into $FASTMAE_CACHE/builtin-v1/{train,val}/<class>/."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..settings import DataError
from .cache import generate_once

VERSION = "builtin-v1"
CLASSES = ("bar", "circle", "crescent", "cross", "ell", "frame", "ring", "square", "star", "triangle")
SPLITS = {"train": 2000, "val": 500}
SIZE = 64
_SS = 3  # drawn at 3x and downsampled: smooth edges
_SPLIT_SEED = {"train": 0, "val": 1}


def _rotate(points, angle, cx, cy):
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]


def _polygon(kind: str, r: float):
    """Outline of a shape of radius ~r centred at the origin (None for the round ones)."""
    if kind == "square":
        return [(-r, -r), (r, -r), (r, r), (-r, r)]
    if kind == "triangle":
        return [(r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if kind == "star":
        return [((r if k % 2 == 0 else 0.42 * r) * math.cos(-math.pi / 2 + k * math.pi / 5),
                 (r if k % 2 == 0 else 0.42 * r) * math.sin(-math.pi / 2 + k * math.pi / 5)) for k in range(10)]
    if kind == "cross":
        t = 0.32 * r
        return [(-t, -r), (t, -r), (t, -t), (r, -t), (r, t), (t, t), (t, r), (-t, r), (-t, t), (-r, t),
                (-r, -t), (-t, -t)]
    if kind == "bar":
        return [(-r, -0.22 * r), (r, -0.22 * r), (r, 0.22 * r), (-r, 0.22 * r)]
    if kind == "ell":
        t = 0.38 * r
        return [(-r, -r), (-r + 2 * t, -r), (-r + 2 * t, r - 2 * t), (r, r - 2 * t), (r, r), (-r, r)]
    return None


def _background(rng, n: int) -> np.ndarray:
    """A textured n x n RGB background (uint8 array)."""
    c1, c2 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    kind = rng.integers(4)
    yy, xx = np.mgrid[0:n, 0:n] / n
    if kind == 0:  # linear gradient at a random angle
        a = rng.uniform(0, 2 * math.pi)
        t = (xx * math.cos(a) + yy * math.sin(a) + 1.5) / 3
    elif kind == 1:  # stripes
        a, f = rng.uniform(0, math.pi), rng.uniform(2, 7)
        t = 0.5 + 0.5 * np.sin(2 * math.pi * f * (xx * math.cos(a) + yy * math.sin(a)))
    elif kind == 2:  # checkerboard
        k = rng.integers(2, 7)
        t = ((np.floor(xx * k) + np.floor(yy * k)) % 2) * rng.uniform(0.4, 1.0)
    else:  # smooth blotches: upsampled low-resolution noise
        low = rng.random((4, 4))
        t = np.asarray(Image.fromarray((low * 255).astype(np.uint8)).resize((n, n), Image.BICUBIC)) / 255.0
    t = t[..., None]
    return (c1 * (1 - t) + c2 * t).clip(0, 255).astype(np.uint8)


def _colour_far_from(rng, bg: np.ndarray):
    mean = bg.reshape(-1, 3).mean(0)
    best, best_d = None, -1.0
    for _ in range(6):  # keep the object visible: the most distant of a few random colours
        c = rng.integers(0, 256, 3)
        d = float(np.abs(c - mean).sum())
        if d > best_d:
            best, best_d = c, d
    return tuple(int(v) for v in best)


def render(label: int, rng: np.random.Generator) -> Image.Image:
    """One SIZE x SIZE RGB picture of shape CLASSES[label]."""
    n = SIZE * _SS
    bg = _background(rng, SIZE)  # textures live at the output resolution; drawing is at n
    img = Image.fromarray(bg, "RGB").resize((n, n), Image.NEAREST)
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(0, 4)):  # clutter: small dots and strokes
        x, y, s = rng.uniform(0, n), rng.uniform(0, n), rng.uniform(1.5, 4) * _SS
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse([x - s, y - s, x + s, y + s], fill=col)
        else:
            a = rng.uniform(0, math.pi)
            draw.line([x, y, x + 4 * s * math.cos(a), y + 4 * s * math.sin(a)], fill=col, width=_SS)
    kind = CLASSES[label]
    r = rng.uniform(0.2, 0.36) * n
    cx, cy = rng.uniform(r, n - r), rng.uniform(r, n - r)
    angle = rng.uniform(0, 2 * math.pi)
    fg = _colour_far_from(rng, bg)
    poly = _polygon(kind, r)
    if poly is not None:
        draw.polygon(_rotate(poly, angle, cx, cy), fill=fg)
    elif kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif kind == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fg, width=int(0.3 * r))
    elif kind == "frame":
        outer = _rotate(_polygon("square", r), angle, cx, cy)
        inner = _rotate(_polygon("square", 0.55 * r), angle, cx, cy)
        mask = Image.new("L", (n, n), 0)
        md = ImageDraw.Draw(mask)
        md.polygon(outer, fill=255)
        md.polygon(inner, fill=0)
        img.paste(Image.new("RGB", (n, n), fg), mask=mask)
    elif kind == "crescent":
        mask = Image.new("L", (n, n), 0)
        md = ImageDraw.Draw(mask)
        md.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        ox, oy = cx + 0.5 * r * math.cos(angle), cy + 0.5 * r * math.sin(angle)
        md.ellipse([ox - 0.85 * r, oy - 0.85 * r, ox + 0.85 * r, oy + 0.85 * r], fill=0)
        img.paste(Image.new("RGB", (n, n), fg), mask=mask)
    img = img.resize((SIZE, SIZE), Image.BOX)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.9)))
    noise = rng.normal(0, rng.uniform(0, 10), (SIZE, SIZE, 3))
    return Image.fromarray((np.asarray(img, dtype=np.float64) + noise).clip(0, 255).astype(np.uint8), "RGB")


def _write(root: Path, split: str, i: int) -> None:
    label = i % len(CLASSES)  # each image has its own generator: same (split, i), same bytes
    img = render(label, np.random.default_rng([_SPLIT_SEED[split], i]))
    img.save(root / split / CLASSES[label] / f"{i:05d}.jpg", quality=92)


def _generate(root: Path) -> None:
    for split in SPLITS:
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
    for split, count in SPLITS.items():
        for i in range(count):
            _write(root, split, i)


def builtin_dataset(split: str = "train") -> Path:
    """ImageFolder root of the built-in SYNTHETIC dataset's `split` ('train': 2000 images,
    'val': 500), generated on first use (a few seconds) into $FASTMAE_CACHE/builtin-v1.
    builtin_dataset("inspection"): the root of the SYNTHETIC inspection dataset (MVTec AD
    layout, fastmae/data/inspection.py)."""
    if split == "inspection":
        from .inspection import inspection_dataset
        return inspection_dataset()
    if split not in SPLITS:
        raise DataError(f"the built-in dataset has splits {', '.join(SPLITS)} (or 'inspection'), "
                        f"not {split!r}")
    return generate_once(VERSION, _generate) / split
