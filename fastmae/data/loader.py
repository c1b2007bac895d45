"""The entry points: pretrain_loader and classification_loader pick a backend (DALI when it
is installed, else torchvision), drop files whose headers show they cannot be used, and
build the loader."""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import torch

from ..settings import BackendUnavailable, ConfigError, DataError, check_choice, resolve_device
from ..files import atomic_write_text
from .base import DataWarning, describe_skips
from .cache import cache_dir
from .images import header_problem
from .sources import Samples, scan
from .transforms import FINETUNE_SCALE, PRETRAIN_SCALE, EvalTransform, TrainTransform


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
        return True
    except ImportError:
        return False


def _resolve_backend(backend: str) -> str:
    check_choice("loader", backend)
    if backend == "auto":
        return "dali" if dali_available() else "torch"
    if backend == "dali" and not dali_available():
        raise BackendUnavailable("data backend 'dali' needs NVIDIA DALI, which is not installed "
                                 "(pip install nvidia-dali-cuda130, or use backend='torch')")
    return backend


def default_workers() -> int:
    """Usable cores shared among the processes of this node (torchrun's LOCAL_WORLD_SIZE),
    at most 16."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    try:
        n //= max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        pass
    return max(1, min(n, 16))


def _fingerprint(paths) -> str | None:
    """A digest of every file's path, size and modification time (None if one is missing):
    the same digest means the same files, so the same header verdicts."""
    h = hashlib.sha256()
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            return None
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def usable(samples: Samples, threads: int | None = None) -> tuple[Samples, list[tuple[str, str]]]:
    """`samples` without the files whose header or end bytes show they cannot be used
    (empty, not an image, truncated, 1x1, decompression-bomb size), and those files with
    the reason. Reads only headers and tails, in a thread pool; the verdicts are cached in
    $FASTMAE_CACHE/checked/ under a digest of the files' sizes and times, so a restart on
    unchanged files only stats them."""
    key = _fingerprint(samples.paths)
    record = cache_dir() / "checked" / f"{key}.json"
    bad = None
    if key is not None and record.is_file():
        try:
            bad = [tuple(x) for x in json.loads(record.read_text())["bad"]]
        except (OSError, ValueError, KeyError, TypeError):
            bad = None  # an unreadable record is only a missed shortcut
    if bad is None:
        threads = threads or min(32, 4 * default_workers())
        with ThreadPoolExecutor(threads) as pool:
            problems = list(pool.map(header_problem, samples.paths, chunksize=64))
        bad = [(samples.paths[i], p) for i, p in enumerate(problems) if p is not None]
        if key is not None:
            _write_record(record, bad)
    if not bad:
        return samples, []
    bad_paths = {p for p, _ in bad}
    return samples.subset(i for i, p in enumerate(samples.paths) if p not in bad_paths), bad


def _write_record(record, bad) -> None:
    try:
        atomic_write_text(json.dumps({"bad": bad}), record)
    except OSError:
        pass  # a read-only cache only costs the next start a re-check


def _check_args(img_size, batch_size, in_chans, world_size, rank):
    if not isinstance(img_size, int) or img_size < 1:
        raise ConfigError(f"img_size must be a positive integer, got {img_size!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if in_chans not in (1, 3):
        raise ConfigError(f"in_chans must be 1 (grayscale) or 3 (RGB) for image files, got {in_chans!r}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is not in range for world_size {world_size}")


def _build(source, *, train, scale, with_labels, img_size, batch_size, backend, device, num_workers,
           seed, rank, world_size, in_chans, dtype, drop_last, validate):
    _check_args(img_size, batch_size, in_chans, world_size, rank)
    if num_workers is not None and (not isinstance(num_workers, int) or num_workers < 0):
        raise ConfigError(f"num_workers must be a non-negative integer, got {num_workers!r}")
    backend = _resolve_backend(backend)
    dev = resolve_device(device)
    samples = scan(source)
    if with_labels and samples.labels is None:
        raise DataError(f"{source} has no labels: use an ImageFolder layout (root/<class>/<image>) "
                        "or a file list with a label after each path")
    skipped = []
    if validate:
        total = len(samples)
        samples, skipped = usable(samples)
        if skipped:
            warnings.warn(describe_skips(skipped, total), DataWarning, stacklevel=3)
        if len(samples) == 0:
            raise DataError(f"none of the {total} image files in {source} can be used, e.g. "
                            f"{skipped[0][0]} ({skipped[0][1]})")
    common = dict(batch_size=batch_size, seed=seed, rank=rank, world_size=world_size, shuffle=train,
                  drop_last=drop_last, device=dev, dtype=dtype, with_labels=with_labels, skipped=skipped)
    workers = default_workers() if num_workers is None else num_workers
    if backend == "dali":
        from .dali import DaliLoader
        return DaliLoader(samples, train=train, scale=scale, img_size=img_size, num_threads=max(1, workers),
                          in_chans=in_chans, **common)
    from .torch_loader import TorchLoader
    transform = TrainTransform(img_size, scale, in_chans) if train else EvalTransform(img_size, in_chans)
    return TorchLoader(samples, transform=transform, num_workers=workers, in_chans=in_chans, **common)


def pretrain_loader(source, *, img_size=224, batch_size=64, backend="auto", device="cuda",
                    num_workers=None, seed=0, rank=0, world_size=1, in_chans=3, dtype=torch.float32,
                    drop_last=True, validate=True, scale=PRETRAIN_SCALE):
    """Batches of images (B, C, H, W), normalised with ImageNet mean/std, on `device` in
    `dtype`: RandomResizedCrop(img_size, `scale`, bicubic) + horizontal flip, MAE's
    pretraining augmentation (scale 0.2-1). `validate` drops unusable files (from their headers) up front;
    files that still fail to decode are skipped when met. Both land in loader.skipped."""
    return _build(source, train=True, scale=tuple(scale), with_labels=False, img_size=img_size,
                  batch_size=batch_size, backend=backend, device=device, num_workers=num_workers, seed=seed,
                  rank=rank, world_size=world_size, in_chans=in_chans, dtype=dtype, drop_last=drop_last,
                  validate=validate)


def classification_loader(source, *, train: bool, img_size=224, batch_size=64, backend="auto", device="cuda",
                          num_workers=None, seed=0, rank=0, world_size=1, in_chans=3, dtype=torch.float32,
                          drop_last=None, validate=True):
    """Batches of (images, int64 labels) on `device`. train=True: RandomResizedCrop(0.08-1) +
    flip, shuffled, last partial batch dropped by default; train=False: resize the shorter
    side to img_size/0.875 and centre crop, in file order, last partial batch kept."""
    if drop_last is None:
        drop_last = bool(train)
    return _build(source, train=bool(train), scale=FINETUNE_SCALE, with_labels=True, img_size=img_size,
                  batch_size=batch_size, backend=backend, device=device, num_workers=num_workers, seed=seed,
                  rank=rank, world_size=world_size, in_chans=in_chans, dtype=dtype, drop_last=drop_last,
                  validate=validate)
