"""The built-in inspection dataset: SYNTHETIC 64x64 photographs of a woven-textured part on a
dark conveyor, in the MVTec AD layout, for measuring anomaly detection with no download.

Each picture shows one part (a rounded square plate with a twill weave) at a random pose
(rotation, offset, scale) under random lighting (brightness, a light gradient, colour cast,
sensor noise). Defective parts carry one of four defects, each with its pixel mask:

- scratch: a thin bright or dark stroke across the weave;
- stain: a soft brownish blot of oil or dirt;
- missing: a chunk broken off the part's edge, the conveyor showing through;
- contamination: a few foreign fibres or particles lying on the part.

Layout (generated once, deterministically, into $FASTMAE_CACHE/inspection-v1/):
  train/good/NNN.png  test/good/NNN.png  test/<defect>/NNN.png  ground_truth/<defect>/NNN_mask.png
Every file is a pure function of (VERSION, split, index): same version, same bytes."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .cache import generate_once

VERSION = "inspection-v1"
SIZE = 64
DEFECTS = ("contamination", "missing", "scratch", "stain")
COUNTS = {"train/good": 400, "test/good": 100, **{f"test/{d}": 40 for d in DEFECTS}}
_SS = 3  # drawn at 3x and downsampled: smooth edges and sub-pixel scratches
_SEED = {"train/good": 0, "test/good": 1, **{f"test/{d}": 10 + i for i, d in enumerate(DEFECTS)}}
_FRESH_GOOD = 100  # seed stream of good_image(): beyond every split above


def _part_mask(rng, n: int):
    """The part's silhouette (float array in [0,1]) and its pose (cx, cy, angle, half-size)."""
    half = rng.uniform(0.36, 0.41) * n
    cx, cy = n / 2 + rng.uniform(-0.04, 0.04) * n, n / 2 + rng.uniform(-0.04, 0.04) * n
    angle = rng.uniform(0, math.pi / 2)  # the plate is square: a quarter turn covers every pose
    yy, xx = np.mgrid[0:n, 0:n] + 0.5
    u = (xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)
    v = -(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle)
    r = 0.22 * half  # rounded corners
    qx, qy = np.maximum(np.abs(u) - (half - r), 0), np.maximum(np.abs(v) - (half - r), 0)
    dist = np.sqrt(qx**2 + qy**2) - r
    inside = np.clip(0.5 - dist / _SS, 0, 1)  # ~1 output pixel of anti-aliased edge
    return inside, (cx, cy, angle, half), u, v


def _weave(u, v, rng) -> np.ndarray:
    """A twill weave in the part's own coordinates (so it turns with the part), values ~[0,1]."""
    period = 4.0 * _SS  # one thread every 4 output pixels
    a = np.sin(2 * math.pi * u / period)
    b = np.sin(2 * math.pi * v / period)
    diag = np.sin(2 * math.pi * (u + v) / (2 * period) + rng.uniform(0, 2 * math.pi))
    return 0.5 + 0.22 * a * np.sign(b) * np.abs(b) ** 0.5 + 0.12 * diag


def _conveyor(rng, n: int) -> np.ndarray:
    """Dark grey belt with fine grain, RGB float 0-255."""
    base = rng.uniform(35, 55)
    grain = rng.normal(0, 4, (n // _SS, n // _SS))
    grain = np.kron(grain, np.ones((_SS, _SS)))
    return np.repeat((base + grain)[..., None], 3, axis=2)


def _render(rng, defect: str | None):
    """One part: (RGB uint8 SIZE x SIZE image, bool SIZE x SIZE defect mask)."""
    n = SIZE * _SS
    inside, (cx, cy, angle, half), u, v = _part_mask(rng, n)
    colour = np.array([150, 128, 92]) + rng.normal(0, 6, 3)  # a tan fabric, slightly varying dye
    part = _weave(u, v, rng)[..., None] * colour * 1.6
    bg = _conveyor(rng, n)
    defect_mask = np.zeros((n, n))

    if defect == "missing":  # a chunk broken off an edge: the part's silhouette loses a polygon
        side = rng.integers(4)
        t = rng.uniform(-0.6, 0.6) * half
        depth, width = rng.uniform(0.18, 0.32) * half, rng.uniform(0.25, 0.45) * half
        pts = [(t - width, -half - 4), (t + width, -half - 4),
               (t + width * rng.uniform(0.1, 0.6), -half + depth),
               (t - width * rng.uniform(0.1, 0.6), -half + depth * rng.uniform(0.6, 1.0))]
        rot = angle + side * math.pi / 2
        c, s = math.cos(rot), math.sin(rot)
        poly = [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]
        chunk = Image.new("L", (n, n), 0)
        ImageDraw.Draw(chunk).polygon(poly, fill=255)
        chunk = np.asarray(chunk, dtype=np.float64) / 255
        defect_mask = chunk * inside
        inside = inside * (1 - chunk)

    img = bg * (1 - inside[..., None]) + part * inside[..., None]

    if defect == "scratch":
        layer = Image.new("L", (n, n), 0)
        d = ImageDraw.Draw(layer)
        length = rng.uniform(0.35, 0.7) * half * 2
        a = rng.uniform(0, math.pi)
        x0, y0 = cx + rng.uniform(-0.4, 0.4) * half, cy + rng.uniform(-0.4, 0.4) * half
        bend = rng.uniform(-0.15, 0.15)
        pts = [(x0 + (k / 8 - 0.5) * length * math.cos(a + bend * (k - 4) / 4),
                y0 + (k / 8 - 0.5) * length * math.sin(a + bend * (k - 4) / 4)) for k in range(9)]
        d.line(pts, fill=255, width=int(rng.integers(2, 4)))
        stroke = np.asarray(layer, dtype=np.float64) / 255 * inside
        tone = rng.choice([235.0, 40.0])
        strength = rng.uniform(0.55, 0.8)
        img = img * (1 - strength * stroke[..., None]) + tone * strength * stroke[..., None]
        defect_mask = stroke
    elif defect == "stain":
        layer = Image.new("L", (n, n), 0)
        d = ImageDraw.Draw(layer)
        r0 = rng.uniform(0.1, 0.2) * half
        x0, y0 = cx + rng.uniform(-0.5, 0.5) * half, cy + rng.uniform(-0.5, 0.5) * half
        for _ in range(rng.integers(2, 5)):  # a blot of a few overlapping drops
            rx, ry = r0 * rng.uniform(0.6, 1.2), r0 * rng.uniform(0.6, 1.2)
            ox, oy = x0 + rng.uniform(-0.7, 0.7) * r0, y0 + rng.uniform(-0.7, 0.7) * r0
            d.ellipse([ox - rx, oy - ry, ox + rx, oy + ry], fill=255)
        blot = np.asarray(layer.filter(ImageFilter.GaussianBlur(_SS)), dtype=np.float64) / 255 * inside
        tint = np.array([70, 45, 25]) + rng.normal(0, 8, 3)
        strength = rng.uniform(0.45, 0.7)
        img = img * (1 - strength * blot[..., None]) + tint * strength * blot[..., None]
        defect_mask = (blot > 0.25).astype(np.float64)
    elif defect == "contamination":
        layer = np.zeros((n, n))
        colours = np.zeros((n, n, 3))
        x0, y0 = cx + rng.uniform(-0.5, 0.5) * half, cy + rng.uniform(-0.5, 0.5) * half
        for _ in range(rng.integers(3, 7)):  # fibres and grains of a foreign colour
            piece = Image.new("L", (n, n), 0)
            d = ImageDraw.Draw(piece)
            px, py = x0 + rng.uniform(-0.3, 0.3) * half, y0 + rng.uniform(-0.3, 0.3) * half
            if rng.random() < 0.5:
                a, ln = rng.uniform(0, math.pi), rng.uniform(2, 5) * _SS
                d.line([px, py, px + ln * math.cos(a), py + ln * math.sin(a)], fill=255, width=_SS)
            else:
                s = rng.uniform(0.8, 1.6) * _SS
                d.ellipse([px - s, py - s, px + s, py + s], fill=255)
            p = np.asarray(piece, dtype=np.float64) / 255
            col = rng.choice([[30, 90, 200], [40, 160, 60], [20, 20, 20], [220, 220, 230]])
            colours = colours * (1 - p[..., None]) + np.array(col, dtype=np.float64) * p[..., None]
            layer = np.maximum(layer, p)
        img = img * (1 - layer[..., None]) + colours
        defect_mask = layer

    # Lighting: overall level, a soft gradient across the field and a slight colour cast.
    yy, xx = np.mgrid[0:n, 0:n] / n
    g = rng.uniform(0, 2 * math.pi)
    level, slope = rng.uniform(0.85, 1.15), rng.uniform(0, 0.12)
    light = level * (1 + slope * ((xx - 0.5) * math.cos(g) + (yy - 0.5) * math.sin(g)))
    img = img * light[..., None] * (1 + rng.normal(0, 0.03, 3))
    out = Image.fromarray(img.clip(0, 255).astype(np.uint8), "RGB").resize((SIZE, SIZE), Image.BOX)
    arr = np.asarray(out, dtype=np.float64) + rng.normal(0, rng.uniform(1, 4), (SIZE, SIZE, 3))
    mask = Image.fromarray((defect_mask * 255).astype(np.uint8)).resize((SIZE, SIZE), Image.BOX)
    mask = np.asarray(mask) >= 96  # a pixel at least ~40% covered by the defect
    return arr.clip(0, 255).astype(np.uint8), mask


def render(split: str, index: int):
    """(RGB uint8 image, bool defect mask) of picture `index` of `split` ('train/good',
    'test/good', 'test/<defect>'): each picture has its own generator."""
    defect = split.split("/")[1]
    rng = np.random.default_rng([_SEED[split], index])
    return _render(rng, None if defect == "good" else defect)


def good_image(index: int, seed: int = 0) -> np.ndarray:
    """A fresh good picture outside every split (held-out sets, drift tests): RGB uint8."""
    return _render(np.random.default_rng([_FRESH_GOOD, seed, index]), None)[0]


def _generate(root: Path) -> None:
    for split, count in COUNTS.items():
        (root / split).mkdir(parents=True)
        defect = split.split("/")[1]
        if defect != "good":
            (root / "ground_truth" / defect).mkdir(parents=True)
        for i in range(count):
            img, mask = render(split, i)
            Image.fromarray(img, "RGB").save(root / split / f"{i:03d}.png")
            if defect != "good":
                Image.fromarray(mask.astype(np.uint8) * 255, "L").save(
                    root / "ground_truth" / defect / f"{i:03d}_mask.png")


def inspection_dataset() -> Path:
    """Root of the built-in SYNTHETIC inspection dataset (MVTec AD layout), generated on first
    use (a few seconds) into $FASTMAE_CACHE/inspection-v1."""
    return generate_once(VERSION, _generate)
