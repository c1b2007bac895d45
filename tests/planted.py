"""Planted duplicates for the dataset-report tests and measurement: exact byte copies and
resized, re-encoded and slightly cropped copies of real photos, with the ground truth."""
import os
import random
import shutil
from pathlib import Path

from PIL import Image

# The shared sample lies in shared/ beside the checkout (as for CI's clean clone).
IMAGENET_SAMPLE = Path(os.environ.get(
    "FASTMAE_IMAGENET_SAMPLE",
    Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample"))
NEAR_KINDS = ("resized", "reencoded", "cropped")


def sample_photos(n: int | None = None) -> list[Path]:
    files = sorted(p for p in IMAGENET_SAMPLE.glob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    return files if n is None else files[:n]


def near_copy(src: Path, dst: Path, kind: str, rng: random.Random) -> Path:
    img = Image.open(src).convert("RGB")
    w, h = img.size
    quality = 90
    if kind == "resized":
        s = rng.uniform(0.4, 0.8)
        img = img.resize((max(8, int(w * s)), max(8, int(h * s))), Image.Resampling.BICUBIC)
    elif kind == "reencoded":
        quality = rng.randint(30, 70)
    elif kind == "cropped":  # 0-5% off each side
        l, t, r, b = (rng.uniform(0.0, 0.05) for _ in range(4))
        img = img.crop((int(w * l), int(h * t), w - int(w * r), h - int(h * b)))
    else:
        raise ValueError(kind)
    img.save(dst, "JPEG", quality=quality)
    return dst


def plant(photos: list[Path], out: Path, *, exact: int, near: int, seed: int = 0) -> dict:
    """Copy `photos` into out/originals/ and plant copies into out/planted/: `exact` byte
    copies and `near` near copies (kinds in turn) of photos chosen at random.
    Returns {"origin": {path: index of its photo}, "exact": [(copy, original)],
    "near": [(copy, original, kind)]}."""
    rng = random.Random(seed)
    (out / "originals").mkdir(parents=True, exist_ok=True)
    (out / "planted").mkdir(parents=True, exist_ok=True)
    origin, originals = {}, []
    for k, p in enumerate(photos):
        dst = out / "originals" / p.name
        shutil.copyfile(p, dst)
        origin[str(dst)] = k
        originals.append(dst)
    truth = {"origin": origin, "exact": [], "near": []}
    for i, k in enumerate(rng.sample(range(len(photos)), exact)):
        dst = out / "planted" / f"exact{i:04d}{originals[k].suffix}"
        shutil.copyfile(originals[k], dst)
        origin[str(dst)] = k
        truth["exact"].append((str(dst), str(originals[k])))
    for i, k in enumerate(rng.sample(range(len(photos)), near)):
        kind = NEAR_KINDS[i % len(NEAR_KINDS)]
        dst = near_copy(originals[k], out / "planted" / f"{kind}{i:04d}.jpg", kind, rng)
        origin[str(dst)] = k
        truth["near"].append((str(dst), str(originals[k]), kind))
    return truth


def score(content: dict, truth: dict) -> dict:
    """Recall of the planted exact and near copies, and the false groups (files of different
    photos grouped together) of a data report."""
    origin = truth["origin"]
    exact_group = {p: gi for gi, g in enumerate(content["exact_duplicates"]) for p in g}
    near_group = {}
    for gi, g in enumerate(content["near_duplicates"]):
        for f in g["files"]:
            for p in [f["path"]] + f["exact_copies"]:
                near_group[p] = gi
    exact_found = sum(1 for c, o in truth["exact"] if c in exact_group and exact_group[c] == exact_group.get(o))
    near_found = sum(1 for c, o, _ in truth["near"] if c in near_group and near_group[c] == near_group.get(o))
    groups = [g for g in content["exact_duplicates"]] + [
        [p for f in g["files"] for p in [f["path"]] + f["exact_copies"]] for g in content["near_duplicates"]]
    false = [g for g in groups if len({origin.get(p, p) for p in g}) > 1]
    near_by_kind = {k: [0, 0] for k in NEAR_KINDS}
    for c, o, kind in truth["near"]:
        near_by_kind[kind][1] += 1
        near_by_kind[kind][0] += c in near_group and near_group[c] == near_group.get(o)
    return {"exact_planted": len(truth["exact"]), "exact_found": exact_found,
            "near_planted": len(truth["near"]), "near_found": near_found,
            "near_recall": near_found / max(1, len(truth["near"])),
            "near_recall_by_kind": {k: f / max(1, n) for k, (f, n) in near_by_kind.items()},
            "false_groups": len(false), "groups": len(groups),
            "precision": 1.0 - len(false) / max(1, len(groups))}
