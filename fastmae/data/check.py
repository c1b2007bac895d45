"""Validating a source file by file: header, size limits and a full decode with Pillow,
in a thread pool (Pillow releases the GIL while decoding)."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..files import atomic_write_text
from .images import BadImage, load_image
from .sources import Samples, is_int, scan


@dataclass
class CheckReport:
    samples: Samples
    bad: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), in source order
    good: list[int] = field(default_factory=list)  # indices into samples
    info: dict = field(default_factory=dict)  # index -> what examine() found (check(examine=...))

    @property
    def clean(self) -> Samples:
        return self.samples.subset(self.good)


def problem(path: str) -> str | None:
    """Why `path` cannot be used for training, or None if it decodes."""
    try:
        load_image(path, 3, fast=True)
        return None
    except BadImage as e:
        return str(e)


def _plain(path: str) -> tuple[str | None, None]:
    return problem(path), None


def check(source, workers: int | None = None, progress=None, examine=None) -> CheckReport:
    """Decode every file of `source`; `progress(n)` is called as files finish.
    examine(path) -> (reason or None, info), when given, replaces the plain decode (one
    pass for the dataset report); the infos of usable files land in report.info."""
    samples = scan(source)
    workers = workers or min(32, 2 * (os.cpu_count() or 1))
    report = CheckReport(samples)
    with ThreadPoolExecutor(workers) as pool:
        for i, (reason, info) in enumerate(pool.map(examine or _plain, samples.paths, chunksize=16)):
            if info is not None:
                report.info[i] = info
            if reason is None:
                report.good.append(i)
            else:
                report.bad.append((samples.paths[i], reason))
            if progress:
                progress(1)
    return report


def write_list(samples: Samples, path: str) -> None:
    """A file list (absolute path, then a tab and the class name when labelled) that scan()
    reads back as the same samples. Numeric class names would read back as label indices,
    so then the index itself is written."""
    by_index = samples.classes is None or any(is_int(c) for c in samples.classes)
    lines = []
    for i, p in enumerate(samples.paths):
        p = os.path.abspath(p)
        if samples.labels is None:
            lines.append(p)
        else:
            y = samples.labels[i]
            lines.append(f"{p}\t{y if by_index else samples.classes[y]}")
    atomic_write_text("\n".join(lines) + "\n", path)
