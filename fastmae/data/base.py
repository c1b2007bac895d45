"""What every loader shares: the per-epoch, per-rank batch plan, epochs, resume points and
the record of skipped files. Backends only turn a plan of sample indices into tensors."""
from __future__ import annotations

import abc
import warnings

import torch

from ..settings import DataError
from .sources import Samples, epoch_order


class DataWarning(UserWarning):
    """Files were skipped because they cannot be decoded."""


def describe_skips(skips, total: int | None = None) -> str:
    shown = "; ".join(f"{p} ({r})" for p, r in skips[:3])
    more = f"; and {len(skips) - 3} more" if len(skips) > 3 else ""
    of = f" of {total}" if total else ""
    return f"fastmae: skipped {len(skips)}{of} image files that cannot be used: {shown}{more} (see loader.skipped)"


class Loader(abc.ABC):
    """Batches of one rank's share of `samples`, epoch by epoch.

    len(loader) = batches per epoch; set_epoch(e) picks the epoch iter() runs;
    iter_from(epoch, start_batch) runs an epoch from a batch (exact resume)."""

    backend = "?"

    def __init__(self, samples: Samples, *, batch_size: int, seed: int, rank: int, world_size: int,
                 shuffle: bool, drop_last: bool, device: torch.device, dtype: torch.dtype,
                 with_labels: bool, skipped=()):
        self.samples = samples
        self.batch_size = int(batch_size)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.shuffle, self.drop_last = shuffle, drop_last
        self.device, self.dtype = device, dtype
        self.with_labels = with_labels
        self.classes = samples.classes
        self.num_classes = len(samples.classes) if samples.classes else None
        self.epoch = 0
        self.skipped: list[tuple[str, str]] = list(skipped)
        self._skipped_paths = {p for p, _ in self.skipped}
        per_rank = len(epoch_order(len(samples), seed=0, epoch=0, rank=rank, world_size=world_size,
                                   shuffle=False))
        self.samples_per_rank = per_rank
        self._len = per_rank // self.batch_size if drop_last else -(-per_rank // self.batch_size)
        if self._len == 0:
            raise DataError(
                f"batch size {self.batch_size} is larger than the {per_rank} usable images "
                f"this rank reads (of {len(samples)} in the source, world size {world_size}) "
                "and the last partial batch is dropped; use a smaller batch size or more images")

    def __len__(self) -> int:
        return self._len

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        return self.iter_from(self.epoch, 0)

    def plan(self, epoch: int, start_batch: int = 0) -> list[list[int]]:
        """Sample indices of each batch this rank reads in `epoch`, from `start_batch` on."""
        if not 0 <= start_batch <= self._len:
            raise DataError(f"start_batch {start_batch} is outside the epoch's {self._len} batches")
        order = epoch_order(len(self.samples), seed=self.seed, epoch=epoch, rank=self.rank,
                            world_size=self.world_size, shuffle=self.shuffle)
        b = self.batch_size
        return [order[i * b:(i + 1) * b] for i in range(start_batch, self._len)]

    @abc.abstractmethod
    def iter_from(self, epoch: int, start_batch: int = 0):
        """Yield this rank's batches of `epoch`, starting at batch `start_batch`."""

    def close(self) -> None:
        """Stop the loader's worker processes or threads now, dropping the batches they have
        queued (otherwise they live as long as the loader and finish that work first). The
        loader is not used after this."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _record_skips(self, skips) -> None:
        new = []
        for path, reason in skips:
            if path not in self._skipped_paths:
                self._skipped_paths.add(path)
                self.skipped.append((path, reason))
                new.append((path, reason))
        if new:
            warnings.warn(describe_skips(new), DataWarning, stacklevel=3)

    def _out(self, imgs: torch.Tensor, labels: torch.Tensor | None):
        non_blocking = self.device.type == "cuda"
        imgs = imgs.to(self.device, self.dtype, non_blocking=non_blocking)
        if not self.with_labels:
            return imgs
        return imgs, labels.to(self.device, torch.int64, non_blocking=non_blocking)
