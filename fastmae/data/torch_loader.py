"""The torchvision baseline: Pillow decode + torchvision transforms in DataLoader workers.
Each sample's augmentation comes from its own torch.Generator seeded by (seed, epoch,
index), so any batch can be recomputed exactly (resume mid-epoch). For a GPU, workers return
uint8 images (a quarter of float32's bytes through shared memory and the PCIe bus) and
ToTensor + Normalize run once per batch on the GPU. For the CPU, workers normalise their own
samples: in the main process that work would run on its intra-op threads, the training's,
which contend with the workers for the same cores. The arithmetic is the same either way."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from ..settings import DataError
from .base import Loader
from .images import BadImage
from .transforms import sample_generator

MAX_SUBSTITUTES = 32  # a bad file is replaced by the next index; give up after this many in a row


class _SampleDataset(Dataset):
    """Item (epoch, index) -> (image (C, H, W), label, [(path, reason) of files skipped]); the
    image uint8, or with `normalize` float32 as the transform normalises it."""

    def __init__(self, samples, transform, seed: int, in_chans: int, normalize: bool):
        self.paths = samples.paths
        self.labels = samples.labels
        self.transform = transform
        self.seed = seed
        self.in_chans = in_chans
        self.normalize = normalize  # float32, normalised, instead of uint8

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, key):
        epoch, index = key
        n = len(self.paths)
        skipped = []
        for k in range(min(n, MAX_SUBSTITUTES)):
            i = (index + k) % n
            g = sample_generator(self.seed, epoch, i)
            try:
                x = self.transform.pixels_from_file(self.paths[i], self.in_chans, g)
            except BadImage as e:
                skipped.append((self.paths[i], str(e)))
                continue
            if self.normalize:
                x = self.transform.normalize(x)
            label = -1 if self.labels is None else self.labels[i]
            return x, label, skipped
        raise DataError(f"{len(skipped)} image files in a row cannot be decoded, e.g. "
                        f"{skipped[0][0]} ({skipped[0][1]}); run `fastmae data check` on the source")


def _collate(items):
    # default_collate stacks straight into shared memory inside a worker: no extra copy
    imgs = default_collate([x for x, _, _ in items])
    labels = torch.tensor([y for _, y, _ in items], dtype=torch.int64)
    skipped = [s for _, _, ss in items for s in ss]
    return imgs, labels, skipped


class _PlanSampler:
    """Batch sampler whose batches the loader sets before each epoch (the DataLoader and its
    persistent workers are built once)."""

    def __init__(self):
        self.batches = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


class TorchLoader(Loader):
    backend = "torch"

    def __init__(self, samples, *, transform, num_workers: int, in_chans: int, **kw):
        super().__init__(samples, **kw)
        self.num_workers = num_workers
        self._sampler = _PlanSampler()
        self._in_workers = num_workers > 0 and self.device.type == "cpu"  # where normalising happens
        self._dl = DataLoader(
            _SampleDataset(samples, transform, self.seed, in_chans, normalize=self._in_workers),
            batch_sampler=self._sampler, num_workers=num_workers, collate_fn=_collate,
            pin_memory=self.device.type == "cuda", persistent_workers=num_workers > 0,
            prefetch_factor=4 if num_workers > 0 else None)

    @property
    def reduced_decode(self) -> bool:
        """Decode JPEGs at the DCT scale the crop needs (default). Worker processes keep the
        value they started with: set it before the first iteration."""
        return self._dl.dataset.transform.reduced

    @reduced_decode.setter
    def reduced_decode(self, on: bool) -> None:
        self._dl.dataset.transform.reduced = bool(on)

    def close(self) -> None:
        it, self._dl._iterator = self._dl._iterator, None  # the persistent workers' iterator
        if it is not None:
            it._shutdown_workers()  # queued batches are skipped, not decoded

    def iter_from(self, epoch: int, start_batch: int = 0):
        self._sampler.batches = [[(epoch, i) for i in batch] for batch in self.plan(epoch, start_batch)]
        return self._generate(iter(self._dl))

    def _generate(self, it):
        normalize = self._dl.dataset.transform.normalize
        non_blocking = self.device.type == "cuda"
        for imgs, labels, skipped in it:
            if skipped:
                self._record_skips(skipped)
            if not self._in_workers:
                imgs = normalize(imgs.to(self.device, non_blocking=non_blocking))
            yield self._out(imgs, labels)
