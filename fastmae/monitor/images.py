"""Images for scoring: every readable file of a folder, resized whole (no crop, so heatmaps
and ground-truth masks stay aligned) to the model's size and normalised as in training.
Unreadable files are skipped with their reason; nothing is written next to the user's files."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from ..data.images import BadImage, load_image
from ..data.sources import scan
from ..data.transforms import mean_std
from ..settings import DataError


@dataclass
class ImageSet:
    paths: list[str]
    images: torch.Tensor                                  # (N, C, H, W) normalised
    labels: list[str] | None = None                       # class folder of each image, if any
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def to_tensor(img: Image.Image, size, in_chans: int = 3) -> torch.Tensor:
    mean, std = mean_std(in_chans)
    img = TF.resize(img, list(size), InterpolationMode.BICUBIC, antialias=True)
    return TF.normalize(TF.to_tensor(img), mean, std)


def load_folder(folder, size, in_chans: int = 3, what: str = "--data") -> ImageSet:
    """Every image file below `folder` (class sub-folders become labels)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"{what} {folder} is not a folder")
    samples = scan(folder)
    tensors, paths, labels, skipped = [], [], [], []
    for i, path in enumerate(samples.paths):
        try:
            img = load_image(path, in_chans)
        except BadImage as e:
            skipped.append((path, str(e)))
            continue
        tensors.append(to_tensor(img, size, in_chans))
        paths.append(path)
        if samples.labels is not None:
            labels.append(samples.classes[samples.labels[i]])
    if not tensors:
        raise DataError(f"{what} {folder}: none of its {len(samples.paths)} image files could be read")
    return ImageSet(paths, torch.stack(tensors), labels if samples.labels is not None else None, skipped)


def ground_truth_masks(data: ImageSet, root, size) -> torch.Tensor | None:
    """(N, H, W) bool masks in the MVTec AD layout (ROOT/../ground_truth/<class>/<stem>_mask.png,
    all-zero for 'good'), or None when a defective image has no mask."""
    if data.labels is None:
        return None
    gt_root = Path(root).expanduser().parent / "ground_truth"
    masks = []
    for path, label in zip(data.paths, data.labels):
        if label == "good":
            masks.append(torch.zeros(tuple(size), dtype=torch.bool))
            continue
        stem = os.path.splitext(os.path.basename(path))[0]
        mfile = gt_root / label / f"{stem}_mask.png"
        if not mfile.is_file():
            return None
        m = Image.open(mfile).convert("L").resize((size[1], size[0]), Image.NEAREST)
        masks.append(torch.from_numpy(np.asarray(m) > 127))
    return torch.stack(masks)


def display_image(x: torch.Tensor, in_chans: int = 3) -> np.ndarray:
    """A normalised (C, H, W) tensor back to uint8 (H, W, 3) for pictures."""
    mean, std = mean_std(in_chans)
    m = torch.tensor(mean).view(-1, 1, 1)
    s = torch.tensor(std).view(-1, 1, 1)
    a = ((x.float().cpu() * s + m).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a
