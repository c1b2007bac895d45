"""The DALI backend's augmentation is a pure function of (seed, epoch, sample index): its crop
windows and flips come from the torch backend's sampler, so a resumed epoch equals the tail
of the uninterrupted one, and both backends crop the same windows. Images are checked pixel
for pixel against Pillow's decode of lossless files."""
import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from fastmae.data import classification_loader, dali_available, pretrain_loader
from fastmae.data.images import BadImage, decoded_size, load_image
from fastmae.data.transforms import (mean_std, normalize_uint8, random_crop_flip, resize_uint8,
                                     sample_generator)
from tests.test_data_common import make_folder, write_image

needs_dali = pytest.mark.skipif(not dali_available(), reason="NVIDIA DALI is not installed")
pytestmark = needs_dali


@pytest.fixture(autouse=True)
def _own_cache(tmp_cache):
    return tmp_cache


def _rng():
    return np.random.default_rng(np.random.randint(2**31))


def _exif(orientation: int) -> bytes:
    ex = Image.Exif()
    ex[0x0112] = orientation
    return ex.tobytes()


def _encode(img: Image.Image, fmt: str, orientation: int | None = None) -> bytes:
    buf = io.BytesIO()
    kw = {"quality": 95} if fmt == "JPEG" else {}
    if orientation is not None:
        kw["exif"] = _exif(orientation)
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_exif_after_pixels(img: Image.Image, orientation: int) -> bytes:
    """A PNG whose eXIf chunk comes after IDAT (allowed), so its header does not tell the
    orientation."""
    data = _encode(img, "PNG")
    payload = _exif(orientation)
    payload = payload[6:] if payload.startswith(b"Exif\x00\x00") else payload  # the chunk holds bare TIFF
    chunk = struct.pack(">I", len(payload)) + b"eXIf" + payload
    chunk += struct.pack(">I", zlib.crc32(b"eXIf" + payload) & 0xFFFFFFFF)
    iend = data.rindex(b"IEND") - 4
    return data[:iend] + chunk + data[iend:]


def _smooth(rng, w, h) -> Image.Image:
    low = rng.integers(0, 256, (max(1, h // 6), max(1, w // 6), 3), dtype=np.uint8)
    return Image.fromarray(low).resize((w, h), Image.BILINEAR)


def _expected(loader, epoch: int, start_batch: int = 0) -> list[torch.Tensor]:
    """The batches `loader` must yield, computed independently: Pillow's decode (EXIF
    applied), the window and flip from the shared sampler, torch's uint8 bicubic resize."""
    s = loader.img_size
    mean, std = mean_std(loader.in_chans)
    out = []
    for batch in loader.plan(epoch, start_batch):
        imgs = []
        for i in batch:
            arr = np.asarray(load_image(loader.samples.paths[i], loader.in_chans))
            arr = arr if arr.ndim == 3 else arr[..., None]
            g = sample_generator(loader.seed, epoch, i)
            (top, left, h, w), flip = random_crop_flip(arr.shape[1], arr.shape[0], loader.scale, g)
            crop = np.ascontiguousarray(arr[top:top + h, left:left + w])
            crop = torch.from_numpy(crop).permute(2, 0, 1)[None]  # channels-last, as the loader's crops
            x = resize_uint8(crop, (s, s))[0]
            imgs.append(x.flip(-1) if flip else x)
        out.append(normalize_uint8(torch.stack(imgs), [255 * m for m in mean], [255 * v for v in std]))
    return out


def _oriented_folder(root, mode: str):
    """Lossless files, some with EXIF orientation (one only readable after the pixel data)."""
    rng = _rng()
    (root / "a").mkdir(parents=True)

    def smooth(w, h):
        return _smooth(rng, w, h).convert(mode)

    files = {"plain.png": _encode(smooth(48, 36), "PNG"),
             "rot90.png": _encode(smooth(60, 32), "PNG", orientation=6),
             "rot180.png": _encode(smooth(40, 52), "PNG", orientation=3),
             "transverse.png": _encode(smooth(36, 50), "PNG", orientation=7),
             "late_exif.png": _png_exif_after_pixels(smooth(64, 30), 8),
             "bmp.bmp": _encode(smooth(33, 45), "BMP")}
    for name, data in files.items():
        (root / "a" / name).write_bytes(data)
    return root


# grayscale files for in_chans=1: DALI's and Pillow's RGB->gray conversions round differently
@pytest.mark.parametrize("in_chans,mode", [(3, "RGB"), (1, "L")])
def test_dali_batches_are_the_shared_windows_pixel_for_pixel(tmp_path, in_chans, mode):
    root = _oriented_folder(tmp_path / "oriented", mode)
    loader = pretrain_loader(root, img_size=12, batch_size=3, backend="dali", device="cpu",
                             num_workers=1, seed=11, in_chans=in_chans)
    for epoch in (0, 1):
        got = list(loader.iter_from(epoch))
        want = _expected(loader, epoch)
        assert len(got) == len(want) == 2
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert loader.skipped == []
    # the file whose orientation only shows after its pixels went through Pillow
    late = [i for i, p in enumerate(loader.samples.paths) if p.endswith("late_exif.png")]
    assert set(late) <= loader._via_pillow and len(loader._via_pillow) == 1


def test_dali_other_epochs_crop_the_same_sample_differently(tmp_path):
    write_image(str(tmp_path / "one" / "x.png"), _rng(), (50, 40))
    loader = pretrain_loader(tmp_path, img_size=10, batch_size=1, backend="dali", device="cpu",
                             num_workers=1, seed=4)
    per_epoch = [next(iter(loader.iter_from(e))) for e in range(4)]
    for e, x in enumerate(per_epoch):
        torch.testing.assert_close(x, _expected(loader, e)[0], rtol=0, atol=0)
    assert all(not torch.equal(per_epoch[a], per_epoch[b]) for a in range(4) for b in range(a + 1, 4))


def test_dali_resume_equals_tail_whatever_ran_before(tmp_path):
    make_folder(str(tmp_path / "d"), _rng(), classes=("cat", "dog", "eel"), per_class=5, size=(44, 34))
    kw = dict(train=True, img_size=16, batch_size=3, backend="dali", device="cpu", num_workers=2, seed=9)
    loader = classification_loader(tmp_path / "d", **kw)
    full = list(loader.iter_from(2))
    assert len(full) == 5
    list(loader.iter_from(3))  # another epoch in between: the resume must not depend on it
    for k in (1, 3, 4):
        tail = list(classification_loader(tmp_path / "d", **kw).iter_from(2, start_batch=k))
        assert len(tail) == 5 - k
        for (a, ya), (b, yb) in zip(full[k:], tail):
            assert torch.equal(a, b) and torch.equal(ya, yb)
    again = list(loader.iter_from(2, start_batch=2))  # same loader object, after the other epoch
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(full[2:], again))
    other = list(classification_loader(tmp_path / "d", **{**kw, "seed": 10}).iter_from(2))
    assert not torch.equal(full[0][0], other[0][0])


def test_both_backends_pick_the_same_windows_and_flips(tmp_path):
    """torch: TrainTransform crops exactly the shared sampler's window; DALI and torch then
    differ only by their resamplers (Pillow vs torch bicubic), not by crop or flip."""
    rng = _rng()
    for i in range(8):
        size = (int(rng.integers(30, 70)), int(rng.integers(30, 70)))
        write_image(str(tmp_path / "k" / f"{i}.png"), rng, size)
    kw = dict(train=True, img_size=16, batch_size=4, device="cpu", num_workers=0, seed=21)
    torch_loader = classification_loader(tmp_path, backend="torch", **kw)
    xt, _ = next(iter(torch_loader.iter_from(5)))
    mean, std = mean_std(3)
    for x, i in zip(xt, torch_loader.plan(5)[0]):
        img = load_image(torch_loader.samples.paths[i])
        g = sample_generator(21, 5, i)
        (top, left, h, w), flip = random_crop_flip(img.width, img.height, (0.08, 1.0), g)
        ref = TF.resized_crop(img, top, left, h, w, [16, 16], TF.InterpolationMode.BICUBIC, antialias=True)
        ref = TF.normalize(TF.to_tensor(TF.hflip(ref) if flip else ref), mean, std)
        torch.testing.assert_close(x, ref, rtol=0, atol=0)
    dali_batches = list(classification_loader(tmp_path, backend="dali", **kw).iter_from(5))
    torch_batches = list(torch_loader.iter_from(5))
    diffs = [(d - t).abs().mean().item() for (d, _), (t, _) in zip(dali_batches, torch_batches)]
    assert max(diffs) < 0.03, diffs  # two bicubic resamplers and 8-bit rounding
    shifted = list(classification_loader(tmp_path, backend="dali", **{**kw, "seed": 22}).iter_from(5))
    assert (shifted[0][0] - torch_batches[0][0]).abs().mean() > 0.1  # other windows: far apart


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_decoded_size_is_the_size_dali_decodes_to(fmt):
    from nvidia.dali import Pipeline, fn, types

    img = _smooth(_rng(), 40, 24)
    datas = [_encode(img, fmt, orientation=o) for o in range(1, 9)] + [_encode(img, fmt)]
    sizes = [decoded_size(d) for d in datas]
    pipe = Pipeline(batch_size=len(datas), num_threads=1, device_id=None, exec_dynamic=True)
    with pipe:
        enc = fn.external_source(source=lambda: [np.frombuffer(d, np.uint8) for d in datas], batch=True,
                                 dtype=types.UINT8, ndim=1)
        pipe.set_outputs(fn.decoders.image(enc, device="cpu"))
    pipe.build()
    out, = pipe.run()
    assert [tuple(np.asarray(out[k]).shape[1::-1]) for k in range(len(datas))] == sizes
    assert sizes[:4] == [(40, 24)] * 4 and sizes[4:8] == [(24, 40)] * 4


def test_decoded_size_defers_unsettled_orientation_and_rejects_bad_headers():
    img = _smooth(_rng(), 40, 24)
    assert decoded_size(_png_exif_after_pixels(img, 6)) is None
    with pytest.raises(BadImage, match="not an image"):
        decoded_size(b"<html>not a picture</html>")
    with pytest.raises(BadImage, match="too small"):
        decoded_size(_encode(Image.new("RGB", (1, 1)), "PNG"))


def test_dali_training_reroutes_a_file_it_cannot_decode_and_keeps_its_window(tmp_path, monkeypatch):
    import fastmae.data.dali as dali_mod

    monkeypatch.setattr(dali_mod, "_dali_native", lambda head: True)  # hand DALI a GIF: it fails
    rng = _rng()
    for i in range(3):
        write_image(str(tmp_path / "c" / f"{i}.png"), rng, (40, 32))
    write_image(str(tmp_path / "c" / "3.png"), rng, (40, 32), fmt="GIF")
    loader = pretrain_loader(tmp_path, img_size=12, batch_size=4, backend="dali", device="cpu",
                             num_workers=1, seed=1)
    x = next(iter(loader))
    assert loader.skipped == [] and 3 in loader._via_pillow
    torch.testing.assert_close(x, _expected(loader, 0)[0], rtol=0, atol=0)


@pytest.mark.gpu
def test_dali_gpu_resume_is_exact_and_crops_the_cpu_windows(tmp_path):
    rng = _rng()
    for i in range(12):
        size = (int(rng.integers(30, 70)), int(rng.integers(30, 70)))
        write_image(str(tmp_path / "g" / f"{i}.png"), rng, size)
    kw = dict(img_size=16, batch_size=4, backend="dali", num_workers=2, seed=3)
    gpu = pretrain_loader(tmp_path, device="cuda", **kw)
    full = list(gpu.iter_from(1))
    tail = list(pretrain_loader(tmp_path, device="cuda", **kw).iter_from(1, start_batch=1))
    assert len(full) == 3 and all(torch.equal(a, b) for a, b in zip(full[1:], tail))
    cpu = list(pretrain_loader(tmp_path, device="cpu", **kw).iter_from(1))
    diffs = [(g.cpu() - c).abs().mean().item() for g, c in zip(full, cpu)]
    assert max(diffs) < 0.03, diffs  # PNG decodes alike; DALI's and torch's cubic resize differ slightly
