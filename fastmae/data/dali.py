"""The NVIDIA DALI backend. fastmae owns the file order and the randomness: an
external_source feeds each batch's encoded bytes from the epoch plan (sharding, reshuffle,
resume, bad-file skipping stay in Python) together with each sample's crop window and flip,
drawn on the host by the torch backend's own sampler from the sample's generator (a pure
function of seed, epoch and sample index). DALI decodes only that window (ROI decoding;
device="mixed" on a GPU, "cpu" without one), resizes (cubic), flips and normalises into an
NCHW batch. The graph has no random operator, so a batch does not depend on what ran before
it: resuming mid-epoch reproduces the uninterrupted run, and both backends crop the same
windows.

On the CPU, a JPEG whose window is at least twice the output size is not decoded by DALI:
its header gives the window, then Pillow decodes it at the smallest DCT scale that keeps the
window >= the output size (reduced.py; the header parsed for the window is handed on, not
parsed again), in a thread pool, while DALI decodes the rest. DALI's
decoders have no scaled decode, and Pillow's 1/2-1/8 decode plus resize measured faster than
DALI's full-resolution ROI decode alone (benchmarks/bench_data.py, docs/data.md).

A new pipeline is built for every iter_from() (builds take milliseconds)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ..settings import DataError
from .base import Loader
from .images import BadImage, decoded_size, load_image
from .reduced import Opened, eval_reduced, jpeg_scale, window_reduced
from .transforms import (eval_resize, mean_std, normalize_uint8, pil_to_uint8, random_crop_flip,
                         resize_shorter_centre_crop, resize_uint8, sample_generator)

MAX_SUBSTITUTES = 32  # a bad file is replaced by the next index; give up after this many in a row


def _dali_native(head: bytes) -> bool:
    """Formats DALI decodes like Pillow does (checked file by file, CMYK and 16-bit
    included): JPEG, PNG, BMP and simple WebP. Others go through Pillow."""
    return (head[:3] == b"\xff\xd8\xff" or head[:8] == b"\x89PNG\r\n\x1a\n" or head[:2] == b"BM"
            or (head[:4] == b"RIFF" and head[8:12] == b"WEBP" and head[12:16] in (b"VP8 ", b"VP8L")))


def _pnm(img) -> bytes:
    """A decoded Pillow image as PNM bytes (no compression): what DALI gets for formats it
    does not read itself."""
    magic = b"P6" if img.mode == "RGB" else b"P5"
    header = b"%s\n%d %d\n255\n" % (magic, img.width, img.height)
    return header + img.tobytes()


# what DALI decodes in the place of a sample Pillow decodes at reduced scale: a black 8x8 PPM
_PLACEHOLDER = np.frombuffer(b"P6\n8 8\n255\n" + bytes(8 * 8 * 3), dtype=np.uint8)


def _is_jpeg(data) -> bool:
    return bytes(data[:3]) == b"\xff\xd8\xff"


def pillow_sample(source, window, flip: bool, img_size: int, in_chans: int) -> torch.Tensor:
    """One sample decoded by Pillow, as (C, s, s) uint8: training, the window (top, left,
    h, w) resized and flipped; evaluation (window None), resize + centre crop. A JPEG is
    decoded at the smallest DCT scale the output allows. `source`: the encoded bytes, or
    an Opened header (closed here). Runs on pool threads (Pillow and torch release the
    GIL). BadImage if the file cannot be decoded."""
    s = img_size
    with source if isinstance(source, Opened) else Opened(source) as src:
        if window is None:
            d = jpeg_scale(*src.size, eval_resize(s)) if src.reducible else 1
            return pil_to_uint8(eval_reduced(src, d, eval_resize(s), s, in_chans))
        d = jpeg_scale(window[3], window[2], s) if src.reducible else 1
        return window_reduced(src, window, d, (s, s), in_chans, flip)


class _Feeder:
    """external_source callback: batch i of the plan as a list of encoded images, and for
    training also each image's crop start (x, y), crop shape (w, h) and flip (0/1)."""

    def __init__(self, loader: "DaliLoader", plan, epoch: int):
        self.loader, self.plan, self.epoch = loader, plan, epoch
        self.fed = {}  # iteration -> sample indices actually fed (after substitution)
        self.pending = {}  # iteration -> {position in batch: future of pillow_sample}
        self.pool = loader._reduce_pool()

    def __call__(self, i):
        if i >= len(self.plan):
            raise StopIteration
        loader = self.loader
        encoded, indices, starts, shapes, flips = [], [], [], [], []
        pending = {}
        s = loader.img_size
        for index in self.plan[i]:
            j, data, size, src = loader._read(index, keep_header=self.pool is not None)
            window, flip = None, False
            if loader.train:
                g = sample_generator(loader.seed, self.epoch, j)
                window, flip = random_crop_flip(size[0], size[1], loader.scale, g)
            if src is not None:  # a JPEG, with the reduced decode on
                if window is not None:
                    d = jpeg_scale(window[3], window[2], s)
                else:
                    d = 1 if src.orientation is None else jpeg_scale(*src.size, eval_resize(s))
                if d > 1:
                    pending[len(encoded)] = self.pool.submit(pillow_sample, src, window, flip, s, loader.in_chans)
                    data, window, flip = _PLACEHOLDER, (0, 0, 8, 8), False
                else:
                    src.close()
            encoded.append(data)
            indices.append(j)
            if loader.train:
                top, left, h, w = window
                starts.append(np.array([left, top], dtype=np.int32))
                shapes.append(np.array([w, h], dtype=np.int32))
                flips.append(np.array(flip, dtype=np.int32))
        self.fed[i] = indices
        self.pending[i] = pending
        return (encoded, starts, shapes, flips) if loader.train else encoded


class DaliLoader(Loader):
    backend = "dali"

    def __init__(self, samples, *, train: bool, scale, img_size: int, num_threads: int, in_chans: int, **kw):
        super().__init__(samples, **kw)
        self.train, self.scale, self.img_size = train, tuple(scale), img_size
        self.num_threads, self.in_chans = num_threads, in_chans
        self._bad: set[int] = set()  # indices found unusable while reading or decoding
        # indices Pillow decodes: DALI failed on them, or their header does not settle their size
        self._via_pillow: set[int] = set()
        mean, std = mean_std(in_chans)
        self._mean = [255.0 * m for m in mean]
        self._std = [255.0 * s for s in std]
        self.reduced_decode = True  # CPU: JPEGs whose window allows it go to Pillow's scaled decode
        self._pool = None

    def _reduce_pool(self) -> ThreadPoolExecutor | None:
        """The threads of the reduced-scale decodes (CPU only; the GPU decodes with nvJPEG)."""
        if self.device.type != "cpu" or not self.reduced_decode:
            return None
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix="fastmae-decode")
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    # -- reading -----------------------------------------------------------------------
    def _mark_bad(self, i: int, reason: str) -> None:
        self._bad.add(i)
        self._record_skips([(self.samples.paths[i], reason)])

    def _read(self, index: int, keep_header: bool = False) -> tuple[int, np.ndarray, tuple[int, int] | None,
                                                                   Opened | None]:
        """The sample read in place of `index` (itself, or the next usable one), its bytes
        for DALI, for training the (width, height) DALI decodes it to, and with
        keep_header, for a JPEG, its Opened header (the caller closes it; else None)."""
        n = len(self.samples)
        for k in range(min(n, MAX_SUBSTITUTES)):
            i = (index + k) % n
            if i in self._bad:
                continue
            path = self.samples.paths[i]
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as e:
                self._mark_bad(i, f"cannot read ({e.strerror or e})")
                continue
            if not data:
                self._mark_bad(i, "empty file (0 bytes)")
                continue
            size, src = None, None
            try:
                native = i not in self._via_pillow and _dali_native(data[:16])
                if native and keep_header and _is_jpeg(data):
                    src = Opened(data)  # = decoded_size's checks, kept for the reduced decode
                    if self.train:
                        size = src.size if src.orientation is not None else None
                elif native and self.train:
                    size = decoded_size(data)  # header only, EXIF orientation applied
                if native and self.train and size is None:
                    self._via_pillow.add(i)
                    native = False
                if not native:
                    if src is not None:
                        src.close()
                        src = None
                    img = load_image(path, self.in_chans)
                    data, size = _pnm(img), img.size
            except BadImage as e:
                self._mark_bad(i, str(e))
                continue
            return i, np.frombuffer(data, dtype=np.uint8), size, src
        raise DataError(f"{MAX_SUBSTITUTES} image files in a row cannot be used, e.g. "
                        f"{self.samples.paths[index]}; run `fastmae data check` on the source")

    # -- pipeline ----------------------------------------------------------------------
    def _pipeline(self, feeder: _Feeder):
        """On a GPU the whole chain runs in DALI: mixed decode of the crop window (nvJPEG
        ROI decode, which reads only the window's rows and columns; nvJPEG has no DCT-scaled
        decode, and this path is not measured on a GPU yet), cubic resize, crop_mirror_normalize. On the CPU, DALI decodes the window (ROI decoding,
        its threads) and the resize, flip and normalise run in torch: DALI's CPU resize
        measured slower than decoding itself, torch's vectorised uint8 antialiased bicubic
        is several times faster (benchmarks/bench_data.py compares the two)."""
        from nvidia.dali import Pipeline, fn, types

        gpu = self.device.type == "cuda"
        pipe = Pipeline(batch_size=self.batch_size, num_threads=self.num_threads,
                        device_id=self.device.index if gpu else None,
                        prefetch_queue_depth=2, exec_dynamic=True)
        out_type = types.RGB if self.in_chans == 3 else types.GRAY
        s = self.img_size
        with pipe:
            if self.train:
                encoded, start, shape, mirror = fn.external_source(
                    source=feeder, num_outputs=4, batch=True, ndim=[1, 1, 1, 0],
                    dtype=[types.UINT8, types.INT32, types.INT32, types.INT32])
                # integer start/shape are absolute pixels, (x, y) and (w, h) in the oriented image
                imgs = fn.decoders.image_slice(encoded, start, shape, device="mixed" if gpu else "cpu",
                                               output_type=out_type)
            else:
                encoded = fn.external_source(source=feeder, batch=True, dtype=types.UINT8, ndim=1)
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

    def _from_cpu_pipeline(self, outs, pending, indices, epoch) -> torch.Tensor:
        """Decoded (cropped) HWC uint8 images -> resized, flipped, normalised NCHW float.
        One torch thread: these are small ops, and an intra-op pool that spins between
        them takes the cores DALI's decoder threads need (measured: 4x slower). For the
        same reason the pool's samples are normalised here, with the batch: normalising on
        the pool threads (whose torch ops use the process's intra-op threads) measured about
        5% more CPU time per image."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._finish_on_cpu(outs, pending, indices, epoch)
        finally:
            torch.set_num_threads(threads)

    def _finish_on_cpu(self, outs, pending, indices, epoch) -> torch.Tensor:
        crops = outs[0]
        n, s = len(crops), self.img_size
        batch = torch.empty((n, self.in_chans, s, s), dtype=torch.uint8)
        flips = np.asarray(outs[1].as_tensor()).reshape(-1) if len(outs) > 1 else np.zeros(n)
        for i in range(n):
            if i in pending:
                continue  # fed as an unflipped placeholder
            img = torch.from_numpy(np.asarray(crops[i])).permute(2, 0, 1)[None]  # a channels-last view
            if self.train:
                x = resize_uint8(img, (s, s))[0]
            else:
                x = resize_shorter_centre_crop(img, eval_resize(s), s)[0]
            batch[i] = x.flip(-1) if flips[i] else x
        for i, future in pending.items():
            try:
                batch[i] = future.result()
            except BadImage as e:
                batch[i] = self._replace(i, indices, epoch, str(e))
        return normalize_uint8(batch, self._mean, self._std)

    def _replace(self, pos: int, indices: list[int], epoch: int, reason: str) -> torch.Tensor:
        """A file whose header passed but whose reduced-scale decode failed: it is skipped
        from now on, and the next usable sample (the rule _read follows) takes its place,
        decoded by Pillow; indices[pos] is updated for the labels."""
        self._mark_bad(indices[pos], reason)
        n = len(self.samples)
        for _ in range(MAX_SUBSTITUTES):
            j, data, size, _ = self._read((indices[pos] + 1) % n)
            window, flip = None, False
            if self.train:
                window, flip = random_crop_flip(size[0], size[1], self.scale, sample_generator(self.seed, epoch, j))
            indices[pos] = j
            try:
                return pillow_sample(data, window, flip, self.img_size, self.in_chans)
            except BadImage as e:
                self._mark_bad(j, str(e))
        raise DataError(f"{MAX_SUBSTITUTES} image files in a row cannot be used, e.g. "
                        f"{self.samples.paths[indices[pos]]}; run `fastmae data check` on the source")

    def iter_from(self, epoch: int, start_batch: int = 0):
        return self._generate(epoch, self.plan(epoch, start_batch))

    def _generate(self, epoch: int, plan):
        done = 0
        rerouted_at = None  # batch at which the last unexplained DALI error happened
        while done < len(plan):
            feeder = _Feeder(self, plan[done:], epoch)
            pipe = self._pipeline(feeder)
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
                pending = feeder.pending.pop(it)
                gpu = self.device.type == "cuda"
                imgs = self._from_gpu_pipeline(outs) if gpu else self._from_cpu_pipeline(outs, pending, indices, epoch)
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
