"""Where images come from: a folder (ImageFolder layout gives labels) or a file list, and
which of them each rank reads in each epoch."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..settings import DataError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# a prepared copy (prepare.py): its manifest, and its file list when the source was a list
PREPARED_MANIFEST = "fastmae-prepared.json"
PREPARED_LIST = "fastmae-prepared.txt"


@dataclass
class Samples:
    """Image paths with optional integer labels and the class names the labels index."""

    paths: list[str]
    labels: list[int] | None = None
    classes: list[str] | None = None

    def __post_init__(self):
        if self.labels is not None and len(self.labels) != len(self.paths):
            raise DataError(f"{len(self.paths)} paths but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices) -> "Samples":
        indices = list(indices)
        labels = None if self.labels is None else [self.labels[i] for i in indices]
        return Samples([self.paths[i] for i in indices], labels, self.classes)


def is_image_name(name: str) -> bool:
    return name.lower().endswith(EXTENSIONS)


def _images_under(folder: str) -> list[str]:
    """Image files below `folder`, recursively, following links, hidden entries skipped
    (macOS ._ files and .DS_Store are not photographs), sorted for a stable order."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(os.path.join(root, f) for f in files if not f.startswith(".") and is_image_name(f))
    return sorted(found)


def _scan_folder(folder: Path) -> Samples:
    entries = sorted((e for e in os.scandir(folder) if not e.name.startswith(".")), key=lambda e: e.name)
    top_images = [e for e in entries if e.is_file() and is_image_name(e.name)]
    class_dirs = [e for e in entries if e.is_dir()]
    if class_dirs and not top_images:
        # ImageFolder: root/<class>/**/<img>; a class is a sub-folder that holds images.
        paths, labels, classes = [], [], []
        for d in class_dirs:
            imgs = _images_under(d.path)
            if imgs:
                paths += imgs
                labels += [len(classes)] * len(imgs)
                classes.append(d.name)
        if paths:
            return Samples(paths, labels, classes)
    paths = _images_under(str(folder))
    if not paths:
        raise DataError(f"no image files ({', '.join(e[1:] for e in EXTENSIONS)}) found under {folder}")
    return Samples(paths)


def _parse_list_line(line: str, base: Path) -> tuple[str, str | None]:
    if "\t" in line:
        path, label = line.rsplit("\t", 1)
    else:
        parts = line.rsplit(None, 1)
        # A path may hold spaces: only split off a label when the whole line is not a file.
        if len(parts) == 2 and not (base / line).is_file():
            path, label = parts
        else:
            path, label = line, None
    path = path.strip()
    label = None if label is None or not label.strip() else label.strip()
    full = Path(path).expanduser()
    if not full.is_absolute():
        full = base / full
    return str(full), label


def _scan_list(list_file: Path) -> Samples:
    try:
        text = list_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read file list {list_file}: {e}") from None
    base = list_file.parent
    paths, raw_labels = [], []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path, label = _parse_list_line(line, base)
        paths.append(path)
        raw_labels.append(label)
    if not paths:
        raise DataError(f"file list {list_file} names no files")
    with_label = [lab is not None for lab in raw_labels]
    if not any(with_label):
        return Samples(paths)
    if not all(with_label):
        n = with_label.index(False) + 1
        raise DataError(f"file list {list_file}: some lines have a label and some do not "
                        f"(entry {n}, {paths[n - 1]!r}, has none)")
    if all(is_int(lab) for lab in raw_labels):
        labels = [int(lab) for lab in raw_labels]
        if min(labels) < 0:
            raise DataError(f"file list {list_file}: negative label {min(labels)}")
        classes = [str(i) for i in range(max(labels) + 1)]
        return Samples(paths, labels, classes)
    classes = sorted(set(raw_labels))
    index = {c: i for i, c in enumerate(classes)}
    return Samples(paths, [index[lab] for lab in raw_labels], classes)


def is_int(s: str) -> bool:
    try:
        int(s)
        return True
    except ValueError:
        return False


def scan(source) -> Samples:
    """Samples from a folder (recursive; root/<class>/<img> gives labels) or a file list
    (one path per line, relative to the list's folder, optional label after a tab/space)."""
    if isinstance(source, Samples):
        if len(source) == 0:
            raise DataError("the data source holds no images")
        return source
    if source is None or str(source) == "":
        raise DataError("no data source given")
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"data source {path} does not exist")
    if path.is_dir():
        if (path / PREPARED_LIST).is_file() and (path / PREPARED_MANIFEST).is_file():
            return _scan_list(path / PREPARED_LIST)  # the prepared copy of a file list
        return _scan_folder(path)
    if is_image_name(path.name):
        raise DataError(f"data source {path} is a single image; give a folder or a file list")
    return _scan_list(path)


def epoch_order(n: int, *, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
                shuffle: bool = True) -> list[int]:
    """Indices rank `rank` reads in `epoch`, as torch's DistributedSampler picks them: one
    permutation from (seed + epoch) shared by all ranks, padded by wrapping around so every
    rank gets ceil(n / world_size) indices, then rank r takes every world_size-th from r."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise DataError(f"rank {rank} is not in range for world_size {world_size}")
    if shuffle:
        g = torch.Generator().manual_seed(int(seed) + int(epoch))
        order = torch.randperm(n, generator=g).tolist()
    else:
        order = list(range(n))
    total = math.ceil(n / world_size) * world_size
    pad = total - n
    while pad > 0:
        order += order[:pad]
        pad = total - len(order)
    return order[rank:total:world_size]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that is a pure function of (seed, epoch, sample index) (splitmix64)."""
    x = 0
    for v in (seed, epoch, index):
        x = (x ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) + 0x9E3779B97F4A7C15 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x >> 1
