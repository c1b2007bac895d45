"""Reduced-size JPEG decoding (fastmae/data/reduced.py): the DCT scale picked at the edges,
the full decode kept where it must be (small windows, tiny images, PNG and other formats),
EXIF orientations mapped right, the output's distance from the full decode on real photos,
and exact resume with both backends."""
import glob
import io
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

import fastmae.data.reduced as reduced_mod
from fastmae.data import classification_loader, dali_available, pretrain_loader
from fastmae.data.images import BadImage, decode, load_image
from fastmae.data.reduced import (EDGE_TOL, Opened, _fit_axis, _fit_either, jpeg_scale, resize_box,
                                  window_reduced)
from fastmae.data.transforms import EvalTransform, TrainTransform, mean_std, random_crop_flip, sample_generator
from tests.planted import IMAGENET_SAMPLE

PHOTOS = sorted(glob.glob(str(IMAGENET_SAMPLE / "*.JPEG")))
needs_dali = pytest.mark.skipif(not dali_available(), reason="NVIDIA DALI is not installed")
BACKENDS = ["torch", pytest.param("dali", marks=needs_dali)]
# the tolerance the two backends are held to against each other (test_data_dali_resume.py):
# mean |difference| of the normalised batches
BACKEND_TOLERANCE = 0.03


@pytest.fixture(autouse=True)
def _own_cache(tmp_cache):
    return tmp_cache


def _rng():
    return np.random.default_rng(np.random.randint(2**31))


def _smooth(rng, w, h) -> Image.Image:
    low = rng.integers(0, 256, (max(1, h // 16), max(1, w // 16), 3), dtype=np.uint8)
    return Image.fromarray(low).resize((w, h), Image.BICUBIC)


def _jpeg(img, orientation=None, quality=92, **kw) -> bytes:
    buf = io.BytesIO()
    kw["quality"] = quality
    if orientation is not None:
        ex = Image.Exif()
        ex[0x0112] = orientation
        kw["exif"] = ex.tobytes()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def _psnr(a, b) -> float:
    mse = float(((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture
def scales(monkeypatch):
    """The DCT scales the decodes of this test used, in order."""
    used = []
    real = reduced_mod.Opened.decode_stored

    def spy(self, d, in_chans, **kw):
        used.append(d)
        return real(self, d, in_chans, **kw)

    monkeypatch.setattr(reduced_mod.Opened, "decode_stored", spy)
    return used


@pytest.mark.parametrize("w,h,need,d", [
    (224, 224, 224, 1), (447, 1000, 224, 1), (448, 448, 224, 2), (597, 5000, 224, 2), (598, 598, 224, 3),
    (895, 5000, 224, 3), (896, 896, 224, 4), (1791, 1800, 224, 4), (1792, 1792, 224, 4), (9000, 9000, 224, 4),
    (100, 80, 224, 1), (8, 8, 224, 1), (64, 64, 8, 4), (31, 64, 8, 3), (21, 64, 8, 2), (15, 16, 8, 1)])
def test_scale_is_the_smallest_that_keeps_the_window_at_least_the_output(w, h, need, d):
    assert reduced_mod.eighths_supported()  # this Pillow decodes at 3/8
    assert jpeg_scale(w, h, need) == d
    assert min(reduced_mod.scaled_size(w, h, d)) >= need or d == 1  # never below the output size
    assert jpeg_scale(w, h, need, scales=(4, 2)) == (2 if d == 3 else d)  # powers of two only
    # 1/8 (DC only, an 8x8 box average) is left out: see reduced.SCALES
    assert jpeg_scale(w, h, need, scales=(8, 4, 3, 2)) == (8 if min(w, h) >= 8 * need else d)


@pytest.mark.parametrize("w,h", [(2048, 1536), (1001, 777), (64, 40)])
@pytest.mark.parametrize("d", [2, 3, 4])
def test_decode_at_each_scale_has_libjpegs_size_and_geometry(w, h, d):
    """Decoded pixel k covers source pixels [k*s, (k+1)*s), s = step(d): the reduced decode
    is the full decode's box resize to the scaled size, up to the DCT's own smoothing."""
    rng = _rng()
    data = _jpeg(_smooth(rng, w, h), quality=95)
    with Opened(data) as src:
        img = src.decode_stored(d, 3)
    assert img.size == reduced_mod.scaled_size(w, h, d)
    assert reduced_mod.step(d) == {2: 2, 3: 8 / 3, 4: 4}[d]
    full = decode(io.BytesIO(data), len(data))
    s, m = reduced_mod.step(d), 2  # m: leave out a border (the last block's padding is past the image)
    inner = (img.width - 2 * m, img.height - 2 * m)
    a = np.asarray(img.crop((m, m, img.width - m, img.height - m)), float)

    def resized(dx):
        box = (m * s + dx, m * s, (img.width - m) * s + dx, (img.height - m) * s)
        return np.asarray(full.resize(inner, Image.BICUBIC, box=box), float)
    assert _psnr(a, resized(0)) > 40, (d, _psnr(a, resized(0)))
    assert _psnr(a, resized(s)) < _psnr(a, resized(0)) - 3  # one decoded pixel off is visible


@pytest.mark.parametrize("subsampling,mcu", [(2, 16), (1, 8), (0, 8)])  # 4:2:0, 4:2:2 (2x1), 4:4:4
def test_frame_header_gives_the_height_field_and_mcu_rows(subsampling, mcu):
    buf = io.BytesIO()
    _smooth(_rng(), 320, 200).save(buf, "JPEG", quality=90, subsampling=subsampling, exif=Image.Exif().tobytes())
    data = buf.getvalue()
    frame = reduced_mod._frame(data)
    at = frame.height_at
    assert (frame.marker, frame.mcu_rows) == (0xC0, mcu) and data[at:at + 4] == bytes([0, 200, 1, 64])  # h 200, w 320
    assert frame.mcus_per_row == (20 if subsampling else 40) and frame.restart == 0
    assert data[frame.scan_at - 3:frame.scan_at] == bytes([0, 63, 0])  # the end of the scan header (Ss, Se, Ah|Al)
    gray = io.BytesIO()
    _smooth(_rng(), 64, 40).convert("L").save(gray, "JPEG")
    assert reduced_mod._frame(gray.getvalue()).mcu_rows == 8
    prog = io.BytesIO()
    _smooth(_rng(), 64, 40).save(prog, "JPEG", progressive=True)
    assert reduced_mod._frame(prog.getvalue()).marker == 0xC2
    assert reduced_mod._frame(b"\xff\xd8\xff\xda\x00\x02") is None and reduced_mod._frame(b"\xff\xd8\x00") is None


@pytest.mark.parametrize("d", [1, 2, 3, 4])
@pytest.mark.parametrize("subsampling", [2, 0])
def test_a_cut_decode_has_the_whole_decodes_rows(d, subsampling):
    """decode_stored(rows=...) stops a whole MCU row past `rows`; the rows above that last
    MCU row are bit for bit the whole decode's, at every scale (in the last one, full-scale
    chroma upsampling meets the image's new bottom edge)."""
    assert reduced_mod.rows_supported()
    buf = io.BytesIO()
    _smooth(_rng(), 1000, 760).save(buf, "JPEG", quality=90, subsampling=subsampling)
    data = buf.getvalue()
    mcu = 16 if subsampling == 2 else 8
    with Opened(data) as src:
        whole = np.asarray(src.decode_stored(d, 3))
    for rows in (1, 333, 700, 728):
        keep = (-(-rows // mcu) + 1) * mcu
        with Opened(data) as src:
            cut = np.asarray(src.decode_stored(d, 3, rows=(0, rows)))
            assert src.top == 0  # no restart markers: every decode starts at the top
        assert cut.shape[0] == reduced_mod.scaled_size(1000, keep, d)[1] < whole.shape[0]
        exact = reduced_mod.scaled_size(1000, keep - mcu, d)[1]
        assert exact * reduced_mod.step(d) >= rows
        assert np.array_equal(cut[:exact], whole[:exact])
    with Opened(data) as src:  # a cut at or past the bottom decodes it all
        assert np.array_equal(np.asarray(src.decode_stored(d, 3, rows=(600, 745))), whole)


@pytest.mark.parametrize("d", [1, 3, 4])
@pytest.mark.parametrize("restart", [dict(restart_marker_rows=1), dict(restart_marker_rows=3),
                                     dict(restart_marker_blocks=7)])
def test_with_restart_markers_the_decode_also_starts_below_the_top(d, restart):
    """A restart marker resets the decoder, so a file that has them is decoded from the
    restart interval (one whose index is a multiple of 8, on a row boundary) at least a
    whole MCU row above the first row needed; the rows in between are the whole decode's."""
    buf = io.BytesIO()
    _smooth(_rng(), 1000, 1500).save(buf, "JPEG", quality=90, **restart)
    data = buf.getvalue()
    frame = reduced_mod._frame(data)
    assert frame.restart == restart.get("restart_marker_blocks", 63 * restart.get("restart_marker_rows", 0))
    with Opened(data) as src:
        whole = np.asarray(src.decode_stored(d, 3))
    m, eighths = 16, reduced_mod._eighths(d)
    every = 8 * frame.restart // math.gcd(frame.mcus_per_row, 8 * frame.restart)  # MCU rows
    for first, end in ((900, 1100), (260, 1400), (1300, 1380)):
        with Opened(data) as src:
            cut = np.asarray(src.decode_stored(d, 3, rows=(first, end)))
            top = src.top
        assert top == (first // m - 1) // every * every * m and (top > 0 or first < 400)
        t, edge = top * eighths // 8, m * eighths // 8  # in decoded rows: the top, an MCU row
        assert (t + edge) * 8 // eighths <= first and (t + cut.shape[0] - edge) * 8 // eighths >= end
        assert np.array_equal(cut[edge:-edge], whole[t + edge:t + cut.shape[0] - edge])



def test_progressive_and_multi_scan_jpegs_are_decoded_whole():
    buf = io.BytesIO()
    _smooth(_rng(), 640, 480).save(buf, "JPEG", quality=90, progressive=True)
    with Opened(buf.getvalue()) as src:
        assert src.decode_stored(4, 3, rows=(0, 100)).size == (160, 120)
    buf = io.BytesIO()
    _smooth(_rng(), 640, 480).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    assert reduced_mod._cut(Image.open(io.BytesIO(data)), data, 100) == 0
    frame = reduced_mod._frame(data)
    assert frame.one_scan
    sos = data.index(b"\xff\xda")  # a first scan of one of the 3 components: more scans follow
    split = data[:sos + 4] + b"\x01" + data[sos + 5:]
    assert not reduced_mod._frame(split).one_scan
    assert reduced_mod._cut(Image.open(io.BytesIO(data)), split, 100) is None


@pytest.mark.parametrize("orientation,restart", [(1, 0), (3, 0), (6, 0), (8, 0), (1, 1), (6, 1), (1, 2)])
def test_training_crops_with_the_cut_decode_equal_those_of_the_whole_decode(tmp_path, monkeypatch, orientation,
                                                                             restart):
    """The decode stops below what the resize reads (its filter, a mirrored fit's extra rows,
    Pillow's exact box) and, with restart markers, starts above it: every crop is bit for
    bit the one from the whole decode."""
    path = tmp_path / "p.jpg"
    path.write_bytes(_jpeg(_smooth(_rng(), 1600, 1200), orientation, restart_marker_rows=restart))
    t = TrainTransform(96, (0.2, 1.0))
    decoded, tops = [], []
    real = reduced_mod.Opened.decode_stored

    def spy(self, d, in_chans, rows=None):
        whole = reduced_mod.scaled_size(*self.img.size, d)[1]
        img = real(self, d, in_chans, rows=rows)
        decoded.append(img.height / whole)
        tops.append(self.top)
        return img

    monkeypatch.setattr(reduced_mod.Opened, "decode_stored", spy)
    cut = [t.from_file(str(path), 3, sample_generator(2, 0, i)) for i in range(40)]
    assert min(decoded) < 0.75 and sum(decoded) / len(decoded) < 0.97  # most decodes stopped early
    assert (max(tops) > 0) == (restart > 0)  # and with restart markers, some started below the top
    reduced_mod._probe()
    monkeypatch.setitem(reduced_mod._CAN, "rows", False)
    for i, x in enumerate(cut):
        assert torch.equal(x, t.from_file(str(path), 3, sample_generator(2, 0, i)))


def test_without_the_3_8_decode_jpeg_scale_keeps_to_powers_of_two(monkeypatch):
    reduced_mod._probe()
    monkeypatch.setitem(reduced_mod._CAN, "eighths", False)
    assert jpeg_scale(895, 5000, 224) == 2 and jpeg_scale(896, 896, 224) == 4


def test_train_crop_picks_the_scale_of_its_window_and_full_decode_for_small_ones(tmp_path, scales):
    rng = _rng()
    path = tmp_path / "big.jpg"
    path.write_bytes(_jpeg(_smooth(rng, 1200, 900)))
    t = TrainTransform(64, (0.2, 1.0))
    for index in range(6):
        x = t.from_file(str(path), 3, sample_generator(0, 0, index))
        (top, left, h, w), _ = random_crop_flip(1200, 900, (0.2, 1.0), sample_generator(0, 0, index))
        assert scales[-1] == jpeg_scale(w, h, 64) > 1
        assert x.shape == (3, 64, 64) and torch.isfinite(x).all()
    scales.clear()
    t = TrainTransform(600, (0.2, 1.0))  # every window of this image is < 2 x 600: full decode
    full = TrainTransform(600, (0.2, 1.0))
    full.reduced = False
    g1, g2 = sample_generator(0, 0, 3), sample_generator(0, 0, 3)
    torch.testing.assert_close(t.from_file(str(path), 3, g1), full.from_file(str(path), 3, g2), rtol=0, atol=0)
    assert set(scales) <= {1}  # no reduced-scale decode


@pytest.mark.parametrize("fmt,size", [("PNG", (640, 520)), ("BMP", (640, 520)), ("JPEG", (40, 30))])
def test_png_other_formats_and_tiny_images_take_the_full_decode(tmp_path, scales, fmt, size):
    rng = _rng()
    path = tmp_path / f"x.{fmt.lower()}"
    _smooth(rng, *size).save(path, fmt)
    for t in (TrainTransform(32, (0.2, 1.0)), EvalTransform(16)):  # a JPEG this size would take 1/8
        for index in range(3):
            got = t.from_file(str(path), 3, sample_generator(1, 2, index))
            want = t(load_image(str(path)), sample_generator(1, 2, index))
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert set(scales) <= {1}  # no reduced-scale decode


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_maps_the_window_to_the_stored_pixels(orientation):
    rng = _rng()
    data = _jpeg(_smooth(rng, 960, 720), orientation)
    full = decode(io.BytesIO(data), len(data))
    window = (int(rng.integers(0, 100)), int(rng.integers(0, 100)), 430, 520)  # top, left, h, w (oriented)
    ref = TF.resized_crop(full, *window, [96, 96], TF.InterpolationMode.BICUBIC, antialias=True)
    with Opened(data) as src:
        assert src.size == full.size and src.orientation == orientation
        got = window_reduced(src, window, 4, (96, 96), 3).permute(1, 2, 0).numpy()  # uint8 (C, H, W) -> HWC
        src.orientation = 1  # the control: the same window taken from the unrotated pixels
        if orientation != 1 and full.size == src.img.size:
            wrong = window_reduced(src, window, 4, (96, 96), 3).permute(1, 2, 0).numpy()
        else:
            wrong = None
    assert _psnr(got, ref) > 38
    if orientation != 1 and wrong is not None:
        assert _psnr(wrong, ref) < 30


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Real photographs upscaled 4x (about 2000 x 1500), JPEG q90: large enough that most
    windows decode at 1/4."""
    if len(PHOTOS) < 4:
        pytest.skip("the ImageNet sample photos are not available")
    root = tmp_path_factory.mktemp("photos")
    (root / "a").mkdir()
    for p in PHOTOS[:: len(PHOTOS) // 4][:4]:
        img = Image.open(p).convert("RGB")
        img.resize((img.width * 4, img.height * 4), Image.BICUBIC).save(root / "a" / os.path.basename(p), quality=90)
    return root


def _batches(source, backend, reduced, train=True, **kw):
    kw = dict(img_size=96, batch_size=2, backend=backend, device="cpu", num_workers=0 if backend == "torch" else 2,
              seed=5, **kw)
    loader = (pretrain_loader(source, **kw) if train else classification_loader(source, train=False, **kw))
    loader.reduced_decode = reduced
    return [b if train else b[0] for b in loader.iter_from(1)], loader


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("train", [True, False])
def test_reduced_decode_of_real_photos_stays_within_the_backends_tolerance(photos, backend, train, scales):
    reduced, _ = _batches(photos, backend, True, train)
    assert scales and min(scales) >= 2  # these photos do take the reduced decode
    full, _ = _batches(photos, backend, False, train)
    _, std = mean_std(3)
    std = torch.tensor(std).view(1, 3, 1, 1)
    for a, b in zip(reduced, full):
        assert (a - b).abs().mean() < BACKEND_TOLERANCE
        for x, y in zip(a * std * 255, b * std * 255):  # back to 0-255 (the mean cancels)
            assert _psnr(x.numpy(), y.numpy()) > 40  # measured 43-55 dB on these photos
    assert not torch.equal(reduced[0], full[0])  # it is another decode, not the same one


@needs_dali
def test_both_backends_reduce_identically(photos):
    dali, _ = _batches(photos, "dali", True)
    tv, _ = _batches(photos, "torch", True)
    for a, b in zip(dali, tv):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)  # the same Pillow decode and resize


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_with_reduced_decode_is_exact(photos, backend):
    full, loader = _batches(photos, backend, True)
    assert len(full) == 2
    kw = dict(img_size=96, batch_size=2, backend=backend, device="cpu", seed=5,
              num_workers=0 if backend == "torch" else 2)
    tail = list(pretrain_loader(photos, **kw).iter_from(1, start_batch=1))
    assert len(tail) == 1 and torch.equal(full[1], tail[0])
    again = list(loader.iter_from(1))  # the same loader object, a second time
    assert all(torch.equal(a, b) for a, b in zip(full, again))


def _sharp_photo() -> Image.Image:
    """A real photograph at its own resolution (sharp edges: the hardest case for a shifted
    resample), or random texture without the sample photos."""
    if PHOTOS:
        return Image.open(PHOTOS[len(PHOTOS) // 2]).convert("RGB")
    return Image.fromarray(_rng().integers(0, 256, (375, 500, 3), dtype=np.uint8))


def test_a_decode_during_the_pillow_probe_waits_for_all_of_its_answers(monkeypatch):
    """A loader's pool threads make their first decodes together: one that arrives while
    another is probing waits for the whole answer instead of reading it half filled in."""
    import threading

    entered, release, got = threading.Event(), threading.Event(), []

    def slow_probe():
        entered.set()
        assert release.wait(10)
        return {"eighths": True, "rows": False}
    monkeypatch.setattr(reduced_mod, "_CAN", {})
    monkeypatch.setattr(reduced_mod, "_probe_pillow", slow_probe)

    def first_decode():
        try:
            got.append((reduced_mod.rows_supported(), reduced_mod.eighths_supported()))
        except Exception as e:  # noqa: BLE001 - reported below
            got.append(repr(e))
    first = threading.Thread(target=first_decode)
    first.start()
    assert entered.wait(10)
    second = threading.Thread(target=first_decode)
    second.start()
    second.join(0.2)
    assert second.is_alive() and got == []  # waiting on the probe, not reading a partial answer
    release.set()
    first.join(10)
    second.join(10)
    assert got == [(False, True), (False, True)]


def test_kernel_input_is_the_box_in_pillows_rgbx_layout():
    """kernel_input packs just the box (Pillow's raw encoder): the crop's pixels, channels
    last, with a 4th channel the resize computes and drops; L stays one channel."""
    img = Image.fromarray(_rng().integers(0, 256, (61, 97, 3), dtype=np.uint8))
    for box in [None, (0, 0, 97, 61), (3, 5, 50, 60), (96, 60, 97, 61)]:
        got = reduced_mod.kernel_input(img, box)
        crop = img if box is None else img.crop(box)
        assert got.shape == (1, 4, crop.height, crop.width)
        assert got.is_contiguous(memory_format=torch.channels_last)
        assert np.array_equal(got[0, :3].permute(1, 2, 0).numpy(), np.asarray(crop))
    gray = img.convert("L")
    assert np.array_equal(reduced_mod.kernel_input(gray, (3, 5, 50, 60))[0, 0].numpy(),
                          np.asarray(gray.crop((3, 5, 50, 60))))


def test_fit_axis_lands_the_box_edges_within_tolerance():
    rng = _rng()
    hit = 0
    for _ in range(400):
        size, n = int(rng.integers(300, 2000)), int(rng.integers(64, 300))
        w = float(rng.uniform(n, min(2 * n, size - 1)))
        x0 = float(rng.integers(0, 4 * (size - int(w)))) / 4  # quarter pixels, as at 1/4 scale
        x1 = x0 + w
        fit = _fit_axis(x0, x1, size, n)
        if fit is None:
            continue
        hit += 1
        a, length, k, scale = fit
        assert a >= 0 and a + length <= size and 0 <= k <= 40
        assert abs(a + scale * k - x0) <= EDGE_TOL + 1e-9 and abs(a + scale * (k + n) - x1) <= EDGE_TOL + 1e-9
        support = 2 * scale
        assert a <= max(0, x0 - support) + 1 and a + length >= min(size, x1 + support)  # the filter's reach
    assert hit > 250  # most boxes take torch's kernel (measured: about 85% per axis)


def _boxes(img, x_from=2.0, count=12):
    """Random fractional boxes of `img`, 96-180 px a side, on quarter pixels (as at 1/4
    scale), starting at least x_from (and 2) pixels from the left (and top) edge."""
    rng = _rng()
    for _ in range(count):
        w, h = (float(rng.integers(4 * 96, 4 * 180)) / 4 for _ in range(2))
        x0 = float(rng.integers(int(4 * x_from), 4 * int(img.width - w))) / 4
        y0 = float(rng.integers(8, 4 * int(img.height - h))) / 4
        yield x0, y0, x0 + w, y0 + h


def test_fast_resize_matches_pillows_exact_box():
    img = _sharp_photo()
    fast = 0
    for box in _boxes(img):
        got = resize_box(img, box, (96, 80))
        want = np.asarray(img.resize((96, 80), Image.BICUBIC, box=box)).transpose(2, 0, 1)
        assert got.shape == (3, 80, 96) and got.dtype == torch.uint8
        diff = np.abs(got.numpy().astype(int) - want)
        fast += _fit_axis(box[0], box[2], img.width, 96) is not None and _fit_axis(box[1], box[3], img.height, 80) is not None
        assert diff.mean() < 0.4 and _psnr(got.numpy(), want) > 48  # measured: <0.2 levels, >55 dB (0.5 px off: ~1 level)
    assert fast >= 4


def test_fast_resize_mirrors_a_box_whose_filter_reaches_the_first_pixel():
    img = _sharp_photo()
    box = (0.75, 1.25, 0.75 + 150.5, 1.25 + 120.25)  # the filter of the first outputs reaches pixel 0
    assert _fit_axis(box[0], box[2], img.width, 64) is None and _fit_axis(box[1], box[3], img.height, 48) is None
    assert _fit_either(box[0], box[2], img.width, 64)[1] and _fit_either(box[1], box[3], img.height, 48)[1]
    got = resize_box(img, box, (64, 48)).numpy()
    want = np.asarray(img.resize((64, 48), Image.BICUBIC, box=box)).transpose(2, 0, 1)
    assert np.abs(got.astype(int) - want).mean() < 0.4 and _psnr(got, want) > 48
    shifted = np.asarray(img.resize((64, 48), Image.BICUBIC, box=(1.25, 1.75, 151.75, 122.0))).transpose(2, 0, 1)
    assert _psnr(got, want) > _psnr(shifted, want) + 6  # the mirror kept the box where it was


def test_a_flipped_resize_is_the_resize_flipped():
    """flip=True resizes the mirrored box where it can (the kernel's output is then already
    flipped: no copy to flip it); the pixels are the flipped resize's up to the fit."""
    img = _sharp_photo()
    folded = 0
    for box in _boxes(img, x_from=0):
        got = resize_box(img, box, (96, 80), flip=True).numpy()
        want = resize_box(img, box, (96, 80)).flip(-1).numpy()
        assert np.abs(got.astype(int) - want).mean() < 0.4 and _psnr(got, want) > 48
        fits, _, _ = reduced_mod._plan(box, img.size, (96, 80), flip=True)
        folded += fits is not None and fits[0][4]
    assert folded >= 6
    box = (0.75, 1.25, img.width - 1.5, 121.5)  # Pillow's exact box: its output flipped
    want = np.asarray(img.resize((64, 48), Image.BICUBIC, box=box))[:, ::-1].transpose(2, 0, 1)
    assert np.array_equal(resize_box(img, box, (64, 48), flip=True).numpy(), want)


@pytest.mark.parametrize("orientation", [1, 6])
def test_a_flipped_window_is_the_window_flipped(orientation):
    data = _jpeg(_smooth(_rng(), 1600, 1200), orientation)
    window = (100, 200, 700, 900)
    with Opened(data) as src:
        got = window_reduced(src, window, 4, (96, 96), 3, flip=True).numpy()
    with Opened(data) as src:
        want = window_reduced(src, window, 4, (96, 96), 3).flip(-1).numpy()
    assert np.abs(got.astype(int) - want).mean() < 0.4  # the fit of the mirrored box: within 0.05 px


def test_fast_resize_takes_pillows_exact_box_where_the_filter_reaches_both_edges():
    img = _sharp_photo()
    box = (0.75, 1.25, img.width - 1.5, 1.25 + 120.25)  # x: pixel 0 and the last pixel in reach
    assert _fit_either(box[0], box[2], img.width, 64)[0] is None
    want = np.asarray(img.resize((64, 48), Image.BICUBIC, box=box)).transpose(2, 0, 1)
    assert np.array_equal(resize_box(img, box, (64, 48)).numpy(), want)


def _broken_jpeg(rng) -> bytes:
    """A JPEG whose header and end marker are fine but whose first Huffman table is garbage:
    only decoding finds it (libjpeg reads the tables when the decode starts)."""
    data = _jpeg(_smooth(rng, 1200, 900))
    i = data.index(b"\xff\xc4")
    return data[:i + 5] + b"\xff" * 16 + data[i + 21:]


def test_broken_jpeg_fails_the_reduced_decode():
    with Opened(_broken_jpeg(_rng())) as src:
        with pytest.raises(BadImage, match="cannot decode"):
            window_reduced(src, (0, 0, 800, 800), 4, (64, 64), 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_file_only_the_reduced_decode_finds_bad_is_skipped(tmp_path, backend):
    rng = _rng()
    (tmp_path / "c").mkdir()
    for i in range(3):
        (tmp_path / "c" / f"{i}.jpg").write_bytes(_jpeg(_smooth(rng, 800, 600)))
    (tmp_path / "c" / "3.jpg").write_bytes(_broken_jpeg(rng))
    loader = pretrain_loader(tmp_path, img_size=64, batch_size=4, backend=backend, device="cpu", num_workers=0
                             if backend == "torch" else 2, seed=0)
    with pytest.warns(UserWarning, match="3.jpg"):
        x = next(iter(loader))
    assert x.shape == (4, 3, 64, 64) and torch.isfinite(x).all()
    assert [os.path.basename(p) for p, _ in loader.skipped] == ["3.jpg"]
