"""Reading one image file safely: which files are unusable (and why), and turning every
usable mode (grayscale, CMYK, 16-bit, alpha, palette) into 8-bit RGB or L."""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, ImageOps

MIN_SIDE = 8  # smaller images carry no crop worth training on (a 1x1 placeholder, a tracking pixel)
MAX_PIXELS = 178_956_970  # Pillow's own decompression-bomb error threshold (2x MAX_IMAGE_PIXELS)
_TAIL = 4096  # bytes read from the end of a file to find its end marker

# Formats the training decoders read; anything else Pillow opens (GIF, ICO, ...) behind an
# image extension is still usable through Pillow.
JPEG, PNG = "JPEG", "PNG"


class BadImage(Exception):
    """A file that cannot be used as a training image; str() is the reason."""


def _tail_problem(f, fmt: str, size: int) -> str | None:
    """A cheap truncation test from the file's last bytes: JPEG ends with an EOI marker,
    PNG with an IEND chunk (trailing padding after them is allowed)."""
    if fmt not in (JPEG, PNG):
        return None
    f.seek(max(0, size - _TAIL))
    tail = f.read()
    if fmt == JPEG and b"\xff\xd9" not in tail:
        return "truncated JPEG (no end-of-image marker)"
    if fmt == PNG and b"IEND" not in tail:
        return "truncated PNG (no IEND chunk)"
    return None


def open_checked(f, size: int) -> Image.Image:
    """Open (header only) an image from the binary file object `f` of `size` bytes and check
    it; raise BadImage with the reason if it is unusable. `f` must stay open while the
    image is used."""
    if size == 0:
        raise BadImage("empty file (0 bytes)")
    try:
        img = Image.open(f)
    except Image.DecompressionBombError:
        raise BadImage(f"image too large (over {MAX_PIXELS:,} pixels)") from None
    except Image.UnidentifiedImageError:
        raise BadImage("not an image file Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImage(f"unreadable image header ({e})") from None
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise BadImage(f"image too large ({w}x{h} = {w * h:,} pixels, limit {MAX_PIXELS:,})")
    if min(w, h) < MIN_SIDE:
        raise BadImage(f"image too small ({w}x{h}; the shorter side must be at least {MIN_SIDE} px)")
    pos = f.tell()
    reason = _tail_problem(f, img.format, size)
    f.seek(pos)
    if reason:
        raise BadImage(reason)
    return img


def _open_file(path: str):
    try:
        f = open(path, "rb")
        return f, os.fstat(f.fileno()).st_size
    except OSError as e:
        raise BadImage(f"cannot read ({e.strerror or e})") from None


def header_problem(path: str) -> str | None:
    """The reason `path` is unusable judged from its header and end bytes, or None."""
    try:
        f, size = _open_file(path)
        with f:
            open_checked(f, size)
        return None
    except BadImage as e:
        return str(e)


def decoded_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of the encoded image `data` once decoded with its EXIF orientation
    applied, as decode() and DALI's decoders both output it, read from the header alone.
    None when the header does not settle it (a PNG whose eXIf chunk comes after the pixel
    data, EXIF Pillow cannot parse): such a file is decoded by Pillow, which knows the size
    it outputs. BadImage when open_checked() rejects the file."""
    img = open_checked(io.BytesIO(data), len(data))
    w, h = img.size
    if "exif" in img.info:
        try:
            orientation = img.getexif().get(0x0112, 1)
        except Exception:  # noqa: BLE001 - any malformed EXIF: let Pillow decode the file
            return None
        return (h, w) if orientation in (5, 6, 7, 8) else (w, h)  # 5-8 transpose the image
    if img.format == PNG and b"eXIf" in data:
        return None
    return w, h


def to_mode(img: Image.Image, in_chans: int) -> Image.Image:
    """8-bit RGB (in_chans=3) or L (in_chans=1) from any mode Pillow decodes. 16-bit gray
    is scaled (Pillow's convert would clip it); alpha is dropped, as torchvision's loader
    and DALI's RGB decode do."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(img)
        if mode == "I" and a.max(initial=0) > 65535:
            a = a.astype(np.float64) * (255.0 / a.max())
        else:
            a = a.astype(np.uint32) >> 8
        img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L")
    elif mode == "F":
        img = Image.fromarray(np.clip(np.asarray(img), 0, 255).astype(np.uint8), "L")
    elif mode in ("P", "PA"):
        img = img.convert("RGBA")
    target = "RGB" if in_chans == 3 else "L"
    if img.mode != target:
        if target == "L" and img.mode not in ("RGB", "L", "LA"):
            img = img.convert("RGB")
        img = img.convert(target)
    return img


def decode(f, size: int, in_chans: int = 3, fast: bool = False) -> Image.Image:
    """Decode an open image file fully into 8-bit RGB/L with EXIF orientation applied (as
    DALI does); raise BadImage with the reason if it cannot be used. fast=True decodes a
    JPEG at 1/8 scale: every entropy-coded byte is still read (so corruption still shows),
    the inverse DCT mostly skipped (a check, not a picture to train on)."""
    img = open_checked(f, size)
    if fast and img.format == JPEG:
        img.draft(img.mode, (max(1, img.width // 8), max(1, img.height // 8)))
    # No warnings.catch_warnings here: it is not thread-safe, and check() and usable()
    # call this from thread pools. Pillow's warnings (odd EXIF, large images) pass through.
    try:
        img.load()
        if img.getexif().get(0x0112, 1) != 1:
            img = ImageOps.exif_transpose(img)
        return to_mode(img, in_chans)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise BadImage(f"cannot decode ({e})") from None


def load_image(path: str, in_chans: int = 3, fast: bool = False) -> Image.Image:
    """decode() of the file at `path`."""
    f, size = _open_file(path)
    with f:
        return decode(f, size, in_chans, fast)
