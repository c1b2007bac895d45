"""The NVIDIA DALI backend. fastmae owns the file order: an external_source feeds each
batch's encoded bytes from the epoch plan (sharding, reshuffle, resume, bad-file skipping
stay in Python); DALI decodes with a fused random crop (device="mixed" on a GPU, "cpu"
without one), resizes (cubic), flips and normalises into an NCHW batch.

A new pipeline is built for every iter_from() (builds take milliseconds), seeded from
(seed, rank, epoch, start batch), so each epoch is deterministic from the seed whatever ran
before it."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import DataError
from .base import Loader
from .images import BadImage, load_image
from .sources import sample_seed
from .transforms import RATIO, eval_resize, mean_std, normalize_uint8, resize_shorter_centre_crop, resize_uint8

MAX_SUBSTITUTES = 32  # a bad file is replaced by the next index; give up after this many in a row


def _dali_native(head: bytes) -> bool:
    """Formats DALI decodes like Pillow does (checked file by file, CMYK and 16-bit
    included): JPEG, PNG, BMP and simple WebP. Others go through Pillow."""
    return (head[:3] == b"\xff\xd8\xff" or head[:8] == b"\x89PNG\r\n\x1a\n" or head[:2] == b"BM"
            or (head[:4] == b"RIFF" and head[8:12] == b"WEBP" and head[12:16] in (b"VP8 ", b"VP8L")))


def _pnm(img) -> np.ndarray:
    """A decoded Pillow image as PNM bytes (no compression): what DALI gets for formats it
    does not read itself."""
    magic = b"P6" if img.mode == "RGB" else b"P5"
    header = b"%s\n%d %d\n255\n" % (magic, img.width, img.height)
    return np.frombuffer(header + img.tobytes(), dtype=np.uint8)


class _Feeder:
    """external_source callback: batch i of the plan as a list of encoded images."""

    def __init__(self, loader: "DaliLoader", plan):
        self.loader, self.plan = loader, plan
        self.fed = {}  # iteration -> sample indices actually fed (after substitution)

    def __call__(self, i):
        if i >= len(self.plan):
            raise StopIteration
        encoded, indices = [], []
        for index in self.plan[i]:
            j, data = self.loader._read(index)
            encoded.append(data)
            indices.append(j)
        self.fed[i] = indices
        return encoded


class DaliLoader(Loader):
    backend = "dali"

    def __init__(self, samples, *, train: bool, scale, img_size: int, num_threads: int, in_chans: int, **kw):
        super().__init__(samples, **kw)
        self.train, self.scale, self.img_size = train, tuple(scale), img_size
        self.num_threads, self.in_chans = num_threads, in_chans
        self._bad: set[int] = set()  # indices found unusable while reading or decoding
        self._via_pillow: set[int] = set()  # indices DALI failed on but Pillow decodes
        mean, std = mean_std(in_chans)
        self._mean = [255.0 * m for m in mean]
        self._std = [255.0 * s for s in std]

    # -- reading -----------------------------------------------------------------------
    def _mark_bad(self, i: int, reason: str) -> None:
        self._bad.add(i)
        self._record_skips([(self.samples.paths[i], reason)])

    def _read(self, index: int) -> tuple[int, np.ndarray]:
        n = len(self.samples)
        for k in range(min(n, MAX_SUBSTITUTES)):
            i = (index + k) % n
            if i in self._bad:
                continue
            path = self.samples.paths[i]
            try:
                data = np.fromfile(path, dtype=np.uint8)
            except OSError as e:
                self._mark_bad(i, f"cannot read ({e.strerror or e})")
                continue
            if data.size == 0:
                self._mark_bad(i, "empty file (0 bytes)")
                continue
            if i in self._via_pillow or not _dali_native(data[:16].tobytes()):
                try:
                    data = _pnm(load_image(path, self.in_chans))
                except BadImage as e:
                    self._mark_bad(i, str(e))
                    continue
            return i, data
        raise DataError(f"{MAX_SUBSTITUTES} image files in a row cannot be used, e.g. "
                        f"{self.samples.paths[index]}; run `fastmae data check` on the source")

    # -- pipeline ----------------------------------------------------------------------
    def _pipeline(self, feeder: _Feeder, seed: int):
        """On a GPU the whole chain runs in DALI: mixed decode with the random crop, cubic
        resize, crop_mirror_normalize. On the CPU, DALI decodes and crops (ROI decoding,
        its threads) and the resize, flip and normalise run in torch: DALI's CPU resize
        measured slower than decoding itself, torch's vectorised uint8 antialiased bicubic
        is several times faster (benchmarks/bench_data.py compares the two)."""
        from nvidia.dali import Pipeline, fn, types

        gpu = self.device.type == "cuda"
        pipe = Pipeline(batch_size=self.batch_size, num_threads=self.num_threads,
                        device_id=self.device.index if gpu else None, seed=seed,
                        prefetch_queue_depth=2, exec_dynamic=True)
        out_type = types.RGB if self.in_chans == 3 else types.GRAY
        s = self.img_size
        with pipe:
            encoded = fn.external_source(source=feeder, batch=True, dtype=types.UINT8, ndim=1)
            if self.train:
                imgs = fn.decoders.image_random_crop(
                    encoded, device="mixed" if gpu else "cpu", output_type=out_type,
                    random_area=list(self.scale), random_aspect_ratio=list(RATIO), num_attempts=10)
                mirror = fn.random.coin_flip(probability=0.5)
            else:
                imgs = fn.decoders.image(encoded, device="mixed" if gpu else "cpu", output_type=out_type)
                mirror = None
            if not gpu:
                pipe.set_outputs(*([imgs] if mirror is None else [imgs, mirror]))
            else:
                if self.train:
                    imgs = fn.resize(imgs, resize_x=s, resize_y=s, interp_type=types.INTERP_CUBIC,
                                     antialias=True)
                    crop = None
                else:
                    imgs = fn.resize(imgs, resize_shorter=eval_resize(s), interp_type=types.INTERP_CUBIC,
                                     antialias=True)
                    mirror, crop = 0, (s, s)
                dtype = types.FLOAT16 if self.dtype == torch.float16 else types.FLOAT
                imgs = fn.crop_mirror_normalize(imgs, dtype=dtype, output_layout="CHW", crop=crop,
                                                crop_pos_x=0.5, crop_pos_y=0.5, mean=self._mean,
                                                std=self._std, mirror=mirror)
                pipe.set_outputs(imgs)
        pipe.build()
        return pipe

    def _from_gpu_pipeline(self, outs) -> torch.Tensor:
        from nvidia.dali.plugin.pytorch import feed_ndarray

        out = outs[0]
        dtype = torch.float16 if self.dtype == torch.float16 else torch.float32
        t = torch.empty((len(out), self.in_chans, self.img_size, self.img_size), dtype=dtype,
                        device=self.device)
        feed_ndarray(out.as_tensor(), t, cuda_stream=torch.cuda.current_stream(self.device))
        return t

    def _from_cpu_pipeline(self, outs) -> torch.Tensor:
        """Decoded (cropped) HWC uint8 images -> resized, flipped, normalised NCHW float.
        One torch thread: these are small ops, and an intra-op pool that spins between
        them takes the cores DALI's decoder threads need (measured: 4x slower)."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._finish_on_cpu(outs)
        finally:
            torch.set_num_threads(threads)

    def _finish_on_cpu(self, outs) -> torch.Tensor:
        crops = outs[0]
        n, s = len(crops), self.img_size
        batch = torch.empty((n, self.in_chans, s, s), dtype=torch.uint8)
        for i in range(n):
            img = torch.from_numpy(np.asarray(crops[i])).permute(2, 0, 1)[None]  # a channels-last view
            if self.train:
                batch[i] = resize_uint8(img, (s, s))[0]
            else:
                batch[i] = resize_shorter_centre_crop(img, eval_resize(s), s)[0]
        if len(outs) > 1:
            flip = torch.from_numpy(np.asarray(outs[1].as_tensor())).reshape(-1).bool()
            batch[flip] = batch[flip].flip(-1)
        return normalize_uint8(batch, self._mean, self._std)

    def iter_from(self, epoch: int, start_batch: int = 0):
        return self._generate(epoch, start_batch, self.plan(epoch, start_batch))

    def _generate(self, epoch: int, start_batch: int, plan):
        done = 0
        rerouted_at = None  # batch at which the last unexplained DALI error happened
        while done < len(plan):
            feeder = _Feeder(self, plan[done:])
            seed = sample_seed(sample_seed(self.seed, self.rank, epoch), start_batch + done, 0) % 2**31
            pipe = self._pipeline(feeder, seed)
            resumed_at = done
            error = None
            while done < len(plan):
                try:
                    outs = pipe.run()
                except StopIteration:
                    break
                except RuntimeError as e:
                    error = e  # a file DALI cannot decode: find it, then rebuild from here
                    break
                it = done - resumed_at
                indices = feeder.fed.pop(it)
                gpu = self.device.type == "cuda"
                imgs = self._from_gpu_pipeline(outs) if gpu else self._from_cpu_pipeline(outs)
                labels = None
                if self.with_labels:
                    labels = torch.tensor([self.samples.labels[i] for i in indices], dtype=torch.int64)
                done += 1
                yield self._out(imgs, labels)
            del pipe
            if error is not None:
                found = self._diagnose([i for idx in feeder.fed.values() for i in idx])
                if found is None or (found == "rerouted" and rerouted_at == done):
                    raise error  # not a file problem (or Pillow for the files did not help)
                rerouted_at = done if found == "rerouted" else None

    def _diagnose(self, suspects) -> str | None:
        """After a DALI decode error: Pillow decides which of the in-flight files are bad
        (skipped from now on). If Pillow reads them all, DALI alone fails on one of them:
        Pillow decodes them from now on, so the rebuilt pipeline always gets further."""
        suspects = [i for i in dict.fromkeys(suspects) if i not in self._bad and i not in self._via_pillow]
        found = False
        for i in suspects:
            try:
                load_image(self.samples.paths[i], self.in_chans)
            except BadImage as e:
                self._mark_bad(i, str(e))
                found = True
        if found:
            return "bad"
        self._via_pillow.update(suspects)
        return "rerouted" if suspects else None
