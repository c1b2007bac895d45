"""Reduced-size JPEG decoding: a training crop of a large photo needs only a fraction of its
pixels, and libjpeg can decode a JPEG at 1/2, 3/8 or 1/4 of its size in the DCT domain,
skipping most of the inverse DCT and colour conversion. The crop window is drawn first,
from the image's header, then the photo is decoded at the smallest of those scales that
still keeps the window at least as large as the output, and only then cropped and resized.
Other formats, and windows too small to reduce, take the full decode.

No DCT scaling skips the entropy (Huffman) decoding of the whole file, which is most of a
reduced decode's time, and libjpeg decodes top to bottom: so a baseline JPEG is decoded
only down to a whole MCU row past the last row the resize reads (decode_stored's `rows`),
by handing libjpeg a copy of the file whose frame header says the image ends there.
libjpeg decodes those rows exactly as in the whole file and skips the rest of the scan to
the end marker (a byte scan, no decoding); a crop's pixels are identical to those of the
whole decode (MAE's windows end 89% of the way down a 4:3 photo on average). Where the file
has restart markers (many cameras write them), the copy's scan also starts at a restart
interval above the window: a restart resets the decoder, so the rows above it are not
decoded at all.

A decode is named by its denominator d (libjpeg's scale_denom, with scale_num 1): libjpeg
decodes at M/8 with M the smallest whole number such that M/8 >= 1/d, so d = 2 and 4 are
1/2 and 1/4 exactly and d = 3 is 3/8. Decoded pixel k covers source pixels
[k*s, (k+1)*s) with s = step(d) = 8/M (libjpeg's DCT scaling: each 8x8 block becomes MxM),
so a window maps to the fractional box window/s exactly; Pillow's resize(box=...) resamples
that box without rounding it to whole pixels. EXIF orientation is handled by mapping the
window back to the stored (unrotated) pixels and rotating the small output instead.

The box's resize (window_reduced) runs in torch's vectorised antialiased bicubic kernel
(Pillow's filter, about 2x faster here) whenever it can hit the fractional box: that kernel
maps output pixel i to the input centre scale * (i + 0.5) from its input's first pixel, so
the input is cut at a whole pixel a and k extra leading outputs are computed and dropped,
with a, k and the scale chosen so that the box's edges land within EDGE_TOL decoded pixels
of the exact ones (0.2 source pixels at 1/4; crop_params itself rounds a window to whole
source pixels). A box whose filter reaches the image's first pixel is resized mirrored (it is
then far from the start). About one box in seven still cannot be hit that closely (near both
ends of an axis, or at a scale near a whole number); those are resized by Pillow with the
exact box."""
from __future__ import annotations

import io
import itertools
import math
import os
import re
import threading
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from .images import JPEG, BadImage, decode, open_checked, to_mode

# The DCT scalings used, smallest first, by denominator (1/4, 3/8, 1/2). libjpeg also offers
# 1/8, but its 1/8 decode keeps only each block's DC coefficient: an 8x8 box average, which on
# textured photos (sand, foliage) lands up to 8 grey levels (mean |difference|) away from the
# bicubic full-decode path, even with the output 3x smaller than the 1/8 image. 1/4, 3/8 and
# 1/2 stay within 0.7 levels. 3/8 is not Pillow's public draft() (powers of two only); it is
# used only where a probe decode shows this Pillow's libjpeg produces it (eighths_supported).
SCALES = (4, 3, 2)


def _eighths(d: int) -> int:
    """M: libjpeg decodes at M/8, the smallest eighth >= 1/d."""
    return -(-8 // d)


def _power_of_two(d: int) -> bool:
    return d & (d - 1) == 0


def step(d: int) -> float:
    """Source pixels per decoded pixel at denominator d: 8/M."""
    return 8 / _eighths(d)


def scaled_size(w: int, h: int, d: int) -> tuple[int, int]:
    """libjpeg's output size at denominator d: each side times M/8, rounded up."""
    m = _eighths(d)
    return -(-w * m // 8), -(-h * m // 8)


def _draft(img: Image.Image, d: int) -> None:
    """Make the JPEG `img` decode at denominator d. Pillow's draft() sets the decoder's
    scale_denom and the image's size for powers of two; for 3 it is drafted at 1/2 and
    then given denominator 3 and libjpeg's 3/8 size (Pillow's decoder passes scale_denom on
    to libjpeg unchanged and fails the load if the size it was given is not libjpeg's)."""
    w, h = img.size
    if _power_of_two(d):
        img.draft(img.mode, (w // d, h // d))  # Pillow picks the largest d with size // request >= d
    else:
        img.draft(img.mode, (w // 2, h // 2))
        tile = img.tile[0]
        ow, oh = scaled_size(w, h, d)
        img.tile = [tile._replace(extents=(0, 0, ow, oh))]
        img._size = (ow, oh)
        img.decoderconfig = (d, 0)
    if img.size != scaled_size(w, h, d):
        raise AssertionError(f"Pillow set up {w}x{h} at {img.size}, not at denominator {d}")


_BASELINE = (0xC0, 0xC1)  # frame markers of Huffman-coded sequential JPEGs (one scan per component set)
_STANDALONE = {0x01, *range(0xD0, 0xD9)}  # markers without a length field
_RESTART = re.compile(rb"\xff[\xd0-\xd7]")  # RSTn: only markers put 0xFF before a non-zero byte in a scan


class _Frame(NamedTuple):
    height_at: int  # offset of the frame header's height field
    marker: int  # SOFn
    mcu_rows: int  # source rows per MCU row
    mcus_per_row: int
    restart: int  # restart interval in MCUs (0: none)
    scan_at: int  # offset of the first scan's entropy-coded data
    one_scan: bool  # the first scan holds every component (sequential: then it is the only scan)


def _frame(data) -> _Frame | None:
    """The frame of the JPEG `data` (_Frame), from its segments up to the first scan; None
    if they do not parse."""
    i, n = 2, len(data)
    frame, restart, comps = None, 0, 0
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        length = data[i + 2] << 8 | data[i + 3]
        if marker == 0xDA:  # start of scan
            if frame is None or i + 4 >= n:
                return None
            return frame._replace(restart=restart, scan_at=i + 2 + length, one_scan=data[i + 4] == comps)
        if marker == 0xDD and length == 4:
            restart = data[i + 4] << 8 | data[i + 5]
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            body = data[i + 4:i + 2 + length]
            if len(body) < 6 or len(body) < 6 + 3 * body[5] or body[5] == 0:
                return None
            width, comps = body[3] << 8 | body[4], body[5]
            hmax = max(body[7 + 3 * c] >> 4 for c in range(comps)) if comps > 1 else 1  # one component:
            vmax = max(body[7 + 3 * c] & 15 for c in range(comps)) if comps > 1 else 1  # 8x8 blocks
            if hmax < 1 or vmax < 1:
                return None
            frame = _Frame(i + 5, marker, 8 * vmax, -(-width // (8 * hmax)), 0, 0, False)
        i += 2 + length
    return None


def _restart_start(frame: _Frame, data, most: int) -> tuple[int, int]:
    """(MCU row, offset): the last MCU row <= `most` at which a restart interval starts whose
    index is a multiple of 8 (the restart marker before it is RST7, so the markers after it
    run RST0, RST1, ... as a scan's do from its start), and the offset of its data; (0, 0)
    when there is none (no restart markers, or none on a row boundary that far down)."""
    if frame.restart == 0 or most < 1:
        return 0, 0
    per = 8 * frame.restart
    every = per // math.gcd(frame.mcus_per_row, per)  # MCU rows between such intervals
    row = most // every * every
    if row == 0:
        return 0, 0
    want = row * frame.mcus_per_row // frame.restart  # the interval; its marker is the want-th
    m = next(itertools.islice(_RESTART.finditer(data, frame.scan_at), want - 1, None), None)
    return (row, m.end()) if m is not None and data[m.start() + 1] == 0xD7 else (0, 0)


def _cut(img: Image.Image, data, rows: int, first: int = 0) -> int | None:
    """Make the opened, not yet drafted JPEG `img` (encoded bytes `data`) decode only the
    rows it needs, [first, rows) of its source rows: down to a whole MCU row past `rows`
    (libjpeg treats the last one as the image's bottom edge), and where the file has
    restart markers, from a restart interval at least one MCU row above `first` (a restart
    resets the decoder: what comes before it need not be decoded at all). Returns the
    source row the image now starts at, or None (nothing changed: nothing to cut, or a
    progressive, arithmetic-coded or multi-scan JPEG (a sequential JPEG's first scan that
    holds every component is its only scan: read from the headers, no byte scan of the
    file), or one whose header does not parse). Corrupt data outside the cut goes
    unnoticed: the tail check (an end marker) still applies."""
    frame = _frame(data)
    w, h = img.size
    if frame is None or frame.marker not in _BASELINE or not frame.one_scan:
        return None
    at, mcu = frame.height_at, frame.mcu_rows
    if (data[at] << 8 | data[at + 1]) != h:
        return None
    keep = min(h, (-(-rows // mcu) + 1) * mcu)
    top, resume = _restart_start(frame, data, first // mcu - 1)
    if keep >= h and top == 0:
        return None
    height = keep - top * mcu
    view = memoryview(data)
    scan = view[resume:] if top else view[frame.scan_at:]
    img.fp = io.BytesIO(b"".join((view[:at], height.to_bytes(2, "big"), view[at + 2:frame.scan_at], scan)))
    img.tile = [img.tile[0]._replace(extents=(0, 0, w, height))]
    img._size = (w, height)
    return top * mcu


_CAN = {}
_PROBING = threading.Lock()


def _probe() -> dict:
    """What this Pillow does beyond its public API, tried once on a small gradient JPEG:
    'eighths', a 3/8 decode (_draft) of libjpeg's size with pixels within 2 levels of a 3/8
    bicubic resize; 'rows', a decode cut at both ends (_cut) whose rows equal the whole decode's.
    Filled whole under a lock: the pool threads of a loader meet their first decode together."""
    if not _CAN:
        with _PROBING:
            if not _CAN:
                _CAN.update(_probe_pillow())
    return _CAN


def _probe_pillow() -> dict:
    can = {}
    ramp = np.linspace(0, 255, 96)
    a = np.stack([ramp[None, :].repeat(64, 0), ramp[:64, None].repeat(96, 1), np.full((64, 96), 128.0)], -1)
    buf = io.BytesIO()
    Image.fromarray(a.astype(np.uint8)).save(buf, "JPEG", quality=95)
    data = buf.getvalue()
    full = Image.open(io.BytesIO(data)).convert("RGB")
    try:
        img = Image.open(io.BytesIO(data))
        _draft(img, 3)
        img.load()
        diff = np.abs(np.asarray(img.convert("RGB"), float) - np.asarray(full.resize((36, 24), Image.BICUBIC), float))
        can["eighths"] = img.size == (36, 24) and float(diff[2:-2, 2:-2].mean()) < 2.0
    except Exception:  # noqa: BLE001 - any failure means: powers of two only
        can["eighths"] = False
    try:  # 32 x 192, a restart marker every MCU row: rows [144, 160) need [128, 176)
        tall = io.BytesIO()
        Image.fromarray(a.astype(np.uint8)[:, :32].repeat(3, 0)).save(tall, "JPEG", quality=95,
                                                                         restart_marker_rows=1)
        tall = tall.getvalue()
        img = Image.open(io.BytesIO(tall))
        top = _cut(img, tall, 160, 144)
        _draft(img, 2)
        img.load()
        want = Image.open(io.BytesIO(tall))
        _draft(want, 2)
        can["rows"] = top == 128 and img.size == (16, 24) and np.array_equal(
            np.asarray(img.convert("RGB"))[8:24], np.asarray(want.convert("RGB"))[72:88])
    except Exception:  # noqa: BLE001 - any failure means: decode whole images
        can["rows"] = False
    return can


def eighths_supported() -> bool:
    """Whether this Pillow decodes a JPEG at 3/8 through _draft."""
    return _probe()["eighths"]


def rows_supported() -> bool:
    """Whether this Pillow decodes a cut JPEG (_cut) to the whole decode's rows."""
    return _probe()["rows"]

# EXIF orientation -> the transpose Pillow's exif_transpose applies to the stored pixels
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


def jpeg_scale(width: int, height: int, need: int, scales=SCALES) -> int:
    """The first denominator d of `scales` (smallest scale first) such that a width x height
    region decoded at denominator d keeps both sides >= need pixels; 1 when none does (the
    full decode). 3 (3/8) only where this Pillow decodes it."""
    for d in scales:
        if not _power_of_two(d) and not eighths_supported():
            continue
        if width >= need * step(d) and height >= need * step(d):
            return d
    return 1


class Opened:
    """An image file opened to its header (checked like every loader checks it), with its
    EXIF orientation and its size once oriented. Use as a context manager."""

    def __init__(self, source):
        """`source`: a path, or the encoded bytes (any buffer: bytes, a uint8 array)."""
        if not isinstance(source, (str, os.PathLike)):
            self._f = io.BytesIO(source)  # shares bytes until written to (getbuffer() would copy them)
            size = memoryview(source).nbytes
        else:
            try:
                self._f = open(source, "rb")
                size = os.fstat(self._f.fileno()).st_size
            except OSError as e:
                raise BadImage(f"cannot read ({e.strerror or e})") from None
        self._nbytes = size
        try:
            self.img = open_checked(self._f, size)
        except BadImage:
            self._f.close()
            raise
        self.is_jpeg = self.img.format == JPEG
        self.top = 0  # the source row the last decode_stored's image starts at
        self.orientation = 1
        if "exif" in self.img.info:
            try:
                self.orientation = int(self.img.getexif().get(0x0112, 1))
            except Exception:  # noqa: BLE001 - malformed EXIF: leave the file to the full decode
                self.orientation = None
        w, h = self.img.size
        self.size = (h, w) if self.orientation in (5, 6, 7, 8) else (w, h)

    @property
    def reducible(self) -> bool:
        """A baseline-readable JPEG whose orientation is known (others take the full decode)."""
        return self.is_jpeg and self.orientation in (1, 2, 3, 4, 5, 6, 7, 8) and len(self.img.tile) == 1

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def decode_full(self, in_chans: int) -> Image.Image:
        """The full decode, oriented (images.decode: what every loader's full path uses)."""
        self._f.seek(0)
        return decode(self._f, self._nbytes, in_chans)

    def decode_stored(self, d: int, in_chans: int, rows: tuple[int, int] | None = None) -> Image.Image:
        """The stored (unrotated) pixels decoded at denominator d, in 8-bit RGB or L. With
        rows = (first, end), a baseline JPEG is decoded only from about `first` (where it has
        restart markers) down to about `end` (source rows, _cut); self.top is then the source
        row the image starts at. Its rows are the whole decode's but for the first and last
        MCU rows at full scale (the chroma upsampling meets the new edges there)."""
        img = self.img
        self.top = 0
        try:
            if rows is not None and self.is_jpeg and rows_supported():
                self._f.seek(0)
                data = self._f.read()
                top = _cut(img, data, rows[1], rows[0])
                if top is None:
                    img.fp = io.BytesIO(data)  # uncut: decode the bytes already read, not the file again
                self.top = top or 0
            if d > 1:
                _draft(img, d)
            img.load()
            return to_mode(img, in_chans)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise BadImage(f"cannot decode ({e})") from None


def _stored_box(box, size, orientation: int):
    """The oriented-image box (x0, y0, x1, y1) of an image whose oriented size is `size`,
    as a box of the stored pixels (the inverse of the EXIF transpose)."""
    x0, y0, x1, y1 = box
    W, H = size  # oriented size
    if orientation == 1:
        return x0, y0, x1, y1
    if orientation == 2:  # mirrored left-right
        return W - x1, y0, W - x0, y1
    if orientation == 3:  # rotated 180
        return W - x1, H - y1, W - x0, H - y0
    if orientation == 4:  # mirrored top-bottom
        return x0, H - y1, x1, H - y0
    # 5-8 swap the axes: the stored image is H wide and W high
    if orientation == 5:  # transposed: stored (y, x)
        return y0, x0, y1, x1
    if orientation == 6:  # turned clockwise for display: stored (y, W - x)
        return y0, W - x1, y1, W - x0
    if orientation == 7:  # transverse: stored (H - y, W - x)
        return H - y1, W - x1, H - y0, W - x0
    return H - y1, x0, H - y0, x1  # 8, turned counter-clockwise: stored (H - y, x)


EDGE_TOL = 0.05  # decoded pixels a fast-resized box's edge may be off (see the module doc)
_EXTRA_MAX = 40  # leading outputs torch may compute and drop to hit the box (cost <= 18%)


def _fit_axis(x0: float, x1: float, size: int, n: int):
    """How torch's kernel resizes [x0, x1) of an axis of `size` decoded pixels to n outputs:
    (a, length, k, scale) = the input slice [a, a + length), computing k + n outputs at
    `scale` input pixels each and keeping the last n, with both box edges within EDGE_TOL;
    None if no k <= _EXTRA_MAX gets there, or the filter reaches the image's first pixel
    (Pillow truncates the filter there, torch would at a)."""
    s = (x1 - x0) / n
    support = 2.0 * max(s, 1.0)  # bicubic, widened by the downscale (antialiasing), as Pillow
    first = math.floor(x0 + 0.5 * s - support + 0.5)  # Pillow's first tap of output 0
    if first < 0 and x0 != 0:
        return None
    best = None
    for k in range(_EXTRA_MAX + 1):
        a = min(round(x0 - s * k), max(first, 0))
        if a < 0:
            break
        scale = (x0 + x1 - 2 * a) / (2 * k + n)  # edge errors +e and -e, the smallest both can be
        e = a + scale * k - x0
        if abs(e) <= EDGE_TOL and (best is None or abs(e) < abs(best[3])):
            best = (a, k, scale, e)
            if abs(e) <= EDGE_TOL / 8:
                break
    if best is None:
        return None
    a, k, scale, _ = best
    end = min(size, math.floor(x0 + (n - 0.5) * s + support + 0.5) + 2)  # past the last tap
    return a, end - a, k, scale


def _fit_either(x0: float, x1: float, size: int, n: int, mirror_first: bool = False):
    """(fit, mirrored): _fit_axis of [x0, x1), or where that misses, of its mirror image
    [size - x1, size - x0) (with mirror_first, the other way round). A box just off an
    axis's start (the filter reaches pixel 0) is usually far from its end, and both filters
    are symmetric, so the mirrored axis resized and mirrored back is the same resize."""
    for mirrored in (mirror_first, not mirror_first):
        fit = _fit_axis(size - x1, size - x0, size, n) if mirrored else _fit_axis(x0, x1, size, n)
        if fit is not None:
            return fit, mirrored
    return None, False


def _to_chw(img: Image.Image) -> torch.Tensor:
    a = torch.from_numpy(np.array(img))  # np.array: a writable copy (np.asarray's is read-only)
    return (a[..., None] if a.ndim == 2 else a).permute(2, 0, 1)


def kernel_input(img: Image.Image, box=None) -> torch.Tensor:
    """An RGB or L image, or its integer box (x0, y0, x1, y1), as the (1, C, H, W)
    channels-last uint8 tensor torch's resize kernel reads fastest. RGB comes as Pillow
    stores it, RGBX (C = 4; drop the 4th output channel): Pillow's raw encoder packs just
    the box into one buffer (crop + tobytes took three copies, np.array packing to RGB two),
    and the kernel's vectorised path works on 4 channels anyway (measured: a 683x512 resize
    in half the time)."""
    if img.mode != "RGB":
        return _to_chw(img if box is None else img.crop(box))[None]
    x0, y0, x1, y1 = box or (0, 0, img.width, img.height)
    encoder = Image._getencoder("RGB", "raw", ("RGBX",))
    encoder.setimage(img.im, (x0, y0, x1, y1))
    size = 4 * (x1 - x0) * (y1 - y0)
    _, done, data = encoder.encode(size)
    if done != 1 or len(data) != size:
        raise AssertionError(f"Pillow's raw encoder gave {len(data)} of {size} bytes")
    buf = bytearray(data)  # writable: torch warns on a read-only buffer
    return torch.frombuffer(buf, dtype=torch.uint8).view(1, y1 - y0, x1 - x0, 4).permute(0, 3, 1, 2)


def _plan(box, size, out_size, flip: bool = False):
    """How resize_box resizes the box of an image of `size` (w, h) to out_size (w, h):
    (fits, first, end). fits is None for Pillow's resize, else for each axis (a, length, k,
    scale, mirrored) with the slice [a, a + length) in the image's coordinates; [first, end)
    holds the rows the resize reads, so a decode may start and stop there. A flipped output
    prefers the mirrored fit of x, whose output needs no flip back."""
    (w, h), (ow, oh) = size, out_size
    fx, mx = _fit_either(box[0], box[2], w, ow, mirror_first=flip)
    fy, my = _fit_either(box[1], box[3], h, oh) if fx is not None else (None, False)
    if fy is None:
        support = 2.0 * max((box[3] - box[1]) / oh, 1.0)  # Pillow's taps, with a row to spare
        return None, max(0, math.floor(box[1] - support) - 1), min(h, math.floor(box[3] + support + 0.5) + 2)
    fits = []
    for (a, length, k, scale), mirrored, n in ((fx, mx, w), (fy, my, h)):
        fits.append((n - a - length if mirrored else a, length, k, scale, mirrored))
    return fits, fits[1][0], fits[1][0] + fits[1][1]


def _below(box, fits, top: int):
    """box and fits of _plan moved up by `top` rows: for the image that starts there."""
    x0, y0, x1, y1 = box
    if fits is not None:
        (ay, ly, ky, sy, my) = fits[1]
        fits = [fits[0], (ay - top, ly, ky, sy, my)]
    return (x0, y0 - top, x1, y1 - top), fits


def _resize(img: Image.Image, box, out_size, fits, flip: bool = False) -> torch.Tensor:
    """resize_box by a _plan's fits (computed for this image, or for a taller one that this
    image is the top of, down to the plan's rows)."""
    if fits is None:
        out = img.resize(out_size, Image.Resampling.BICUBIC, box=box)
        return _to_chw(out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else out).contiguous()
    (ax, lx, kx, sx, mx), (ay, ly, ky, sy, my) = fits
    region = kernel_input(img, (ax, ay, ax + lx, ay + ly))
    mirrored = [dim for dim, m in ((-1, mx), (-2, my)) if m]
    region = region.flip(mirrored) if mirrored else region  # channels-last flips copy whole pixels
    ow, oh = out_size
    out = torch.ops.aten._upsample_bicubic2d_aa(region, [ky + oh, kx + ow], False, 1.0 / sy, 1.0 / sx)[0, :, ky:, kx:]
    mirrored = [dim for dim, m in ((-1, mx != flip), (-2, my)) if m]
    out = out.flip(mirrored) if mirrored else out  # on all 4 channels: 10x faster than on a 3-channel view
    return out[:len(img.getbands())]


def resize_box(img: Image.Image, box, out_size, flip: bool = False) -> torch.Tensor:
    """img (RGB or L) resized from the fractional box (x0, y0, x1, y1) to out_size (w, h),
    antialiased bicubic, as uint8 (C, h, w), flipped left-right with `flip`: torch's kernel
    when _fit_either hits the box on both axes, else Pillow's resize(box=...). The result may
    be a strided view (of the kernel's channels-last output)."""
    return _resize(img, box, out_size, _plan(box, img.size, out_size, flip)[0], flip)


# EXIF orientation -> the same transpose on a (C, H, W) tensor
_TENSOR_TRANSPOSE = {2: lambda t: t.flip(-1), 3: lambda t: t.flip(-2, -1), 4: lambda t: t.flip(-2),
                     5: lambda t: t.transpose(-2, -1), 6: lambda t: t.transpose(-2, -1).flip(-1),
                     7: lambda t: t.transpose(-2, -1).flip(-2, -1), 8: lambda t: t.transpose(-2, -1).flip(-2)}


def window_reduced(src: Opened, window, d: int, out_size, in_chans: int, flip: bool = False) -> torch.Tensor:
    """The oriented window (top, left, h, w) of `src`, decoded at denominator d and resized
    (bicubic, antialiased) to out_size (h, w), flipped left-right with `flip`, as uint8
    (C, h, w), possibly a strided view: what TF.resized_crop (+ TF.hflip) gives on the full
    decode, up to the DCT scaling's own smoothing."""
    top, left, h, w = window
    orientation = src.orientation
    if orientation is None:  # EXIF Pillow cannot parse: the full decode decides what it means
        img = src.decode_full(in_chans)
        out = _to_chw(img.resize(out_size[::-1], Image.Resampling.BICUBIC, box=(left, top, left + w, top + h)))
        return out.flip(-1) if flip else out
    x0, y0, x1, y1 = _stored_box((left, top, left + w, top + h), src.size, orientation)
    oh, ow = out_size
    size = (oh, ow) if orientation in (5, 6, 7, 8) else (ow, oh)
    s = step(d)
    box = (x0 / s, y0 / s, x1 / s, y1 / s)
    upright = orientation == 1  # the flip is the stored x axis's: folded into the resize
    fits, first, end = _plan(box, scaled_size(*src.img.size, d), size, flip and upright)
    img = src.decode_stored(d, in_chans, rows=(math.floor(first * s), math.ceil(end * s)))
    if src.top:  # whole MCU rows: whole decoded rows at every scale
        box, fits = _below(box, fits, src.top * _eighths(d) // 8)
    out = _resize(img, box, size, fits, flip and upright)
    if upright:
        return out
    out = _TENSOR_TRANSPOSE[orientation](out)
    return out.flip(-1) if flip else out


def oriented_reduced(src: Opened, d: int, in_chans: int) -> Image.Image:
    """The whole image decoded at denominator d with its EXIF orientation applied."""
    if src.orientation is None:
        return src.decode_full(in_chans)
    img = src.decode_stored(d, in_chans)
    return img if src.orientation == 1 else img.transpose(_TRANSPOSE[src.orientation])


def eval_reduced(src: Opened, d: int, resize: int, crop: int, in_chans: int) -> Image.Image:
    """torchvision's Resize(resize) + CenterCrop(crop) of the oriented image, from its decode
    at denominator d: the resized size comes from the full size, so it matches the full
    decode's."""
    img = oriented_reduced(src, d, in_chans)
    w, h = src.size
    if w <= h:
        size = (resize, int(resize * h / w))
    else:
        size = (int(resize * w / h), resize)
    img = img.resize(size, Image.Resampling.BICUBIC)
    top = int(round((size[1] - crop) / 2.0))
    left = int(round((size[0] - crop) / 2.0))
    return img.crop((left, top, left + crop, top + crop))
