"""Helpers that make small image files for the data tests, and the tests of decoding one
file: every odd-but-good kind converts to the right 8-bit RGB, every bad kind gives its reason."""
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from fastmae.data.images import BadImage, load_image


def write_image(path, rng, size=(48, 40), fmt=None, mode="RGB"):
    """A random smooth image (upsampled noise, so JPEG keeps it recognisable) at `path`."""
    w, h = size
    low = rng.integers(0, 256, (max(1, h // 8), max(1, w // 8), 3), dtype=np.uint8)
    img = Image.fromarray(low).resize((w, h), Image.BILINEAR)
    if mode != "RGB":
        img = img.convert(mode)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img.save(path, format=fmt)
    return img


def make_folder(root, rng, classes=("cat", "dog"), per_class=6, size=(48, 40)):
    """root/<class>/<i>.jpg|png; returns the sorted paths."""
    paths = []
    for c in classes:
        for i in range(per_class):
            ext = "jpg" if i % 3 else "png"
            p = os.path.join(root, c, f"{i:02d}.{ext}")
            write_image(p, rng, size)
            paths.append(p)
    return sorted(paths)


def png16(path, arr):
    """A 16-bit PNG (RGB for HxWx3, gray for HxW) written by hand: Pillow cannot save 16-bit RGB."""
    h, w = arr.shape[:2]
    colour = 2 if arr.ndim == 3 else 0
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def png_header_only(path, w, h):
    """A PNG whose header claims w x h pixels (a decompression bomb's header)."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def make_bad_files(folder, rng):
    """One file of each unusable kind -> {name: expected words in the reason}."""
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, "empty.jpg"), "wb").close()
    with open(os.path.join(folder, "text.jpg"), "w") as f:
        f.write("this is not an image\n" * 20)
    good = os.path.join(folder, "_full.jpg")
    write_image(good, rng, (64, 64))
    data = open(good, "rb").read()
    os.remove(good)
    with open(os.path.join(folder, "truncated.jpg"), "wb") as f:
        f.write(data[: len(data) // 2])
    Image.new("RGB", (1, 1), (200, 10, 10)).save(os.path.join(folder, "onepixel.png"))
    png_header_only(os.path.join(folder, "bomb.png"), 40000, 40000)
    with open(os.path.join(folder, "unknown.webp"), "wb") as f:
        f.write(b"RIFF\x10\x00\x00\x00WEBPXXXX" + bytes(rng.integers(0, 256, 64, dtype=np.uint8)))
    return {"empty.jpg": "empty", "text.jpg": "not an image", "truncated.jpg": "truncated",
            "onepixel.png": "too small", "bomb.png": "too large", "unknown.webp": "not an image"}


def snapshot(folder):
    """(bytes, mtime) of every file under folder: user files must never change."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            p = os.path.join(root, name)
            out[p] = (open(p, "rb").read(), os.stat(p).st_mtime_ns)
    return out


# --- one file -------------------------------------------------------------------------


@pytest.fixture
def rng():
    return np.random.default_rng(np.random.randint(2**31))


def test_cmyk_jpeg_converts_to_rgb(tmp_path, rng):
    src = write_image(str(tmp_path / "a.png"), rng, (32, 24))
    src.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    out = load_image(str(tmp_path / "cmyk.jpg"))
    assert out.mode == "RGB" and out.size == (32, 24)
    diff = np.abs(np.asarray(out, np.int32) - np.asarray(src, np.int32))
    assert diff.mean() < 6, diff.mean()  # JPEG-lossy, but the same picture in RGB


def test_16bit_png_scaled_not_clipped(tmp_path, rng):
    arr8 = rng.integers(0, 256, (12, 16, 3), dtype=np.uint16)
    png16(str(tmp_path / "rgb16.png"), arr8 * 257)
    np.testing.assert_array_equal(np.asarray(load_image(str(tmp_path / "rgb16.png"))), arr8)
    gray8 = rng.integers(0, 256, (12, 16), dtype=np.uint16)
    png16(str(tmp_path / "gray16.png"), gray8 * 257)
    out = load_image(str(tmp_path / "gray16.png"))
    assert out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out)[..., 1], gray8)
    np.testing.assert_array_equal(np.asarray(load_image(str(tmp_path / "gray16.png"), in_chans=1)), gray8)


def test_alpha_and_palette_drop_to_rgb(tmp_path, rng):
    rgba = rng.integers(0, 256, (10, 14, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(np.asarray(load_image(str(tmp_path / "a.png"))), rgba[..., :3])
    pal = Image.fromarray(rgba[..., :3]).convert("P")
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(np.asarray(load_image(str(tmp_path / "p.png"))), np.asarray(pal.convert("RGB")))


def test_grayscale_gives_three_equal_channels_or_one(tmp_path, rng):
    write_image(str(tmp_path / "g.jpg"), rng, (20, 20), mode="L")
    rgb = np.asarray(load_image(str(tmp_path / "g.jpg")))
    assert rgb.shape == (20, 20, 3) and (rgb[..., 0] == rgb[..., 2]).all()
    assert np.asarray(load_image(str(tmp_path / "g.jpg"), in_chans=1)).shape == (20, 20)


def test_each_bad_kind_has_its_reason(tmp_path, rng):
    expected = make_bad_files(str(tmp_path), rng)
    for name, words in expected.items():
        with pytest.raises(BadImage) as e:
            load_image(str(tmp_path / name))
        assert words in str(e.value).lower(), (name, e.value)
    with pytest.raises(BadImage, match="cannot read"):
        load_image(str(tmp_path / "missing.jpg"))
