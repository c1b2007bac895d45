"""`fastmae data check --report`: what a folder of photos holds, beside which files are
unusable. One pass over the files in check()'s thread pool: each file is read once (its
SHA-256), its header gives format, size and mode, and one reduced decode gives a perceptual
hash, pixel statistics and colour. Then, without comparing all pairs:

- exact duplicates: the same SHA-256;
- near duplicates: DCT pHashes within a Hamming radius (fastmae.data.phash), grouped; each
  picture is hashed whole and with a 4% border trimmed, so slightly cropped copies match;
- near-uniform pictures (blank frames, lens cap): low pixel standard deviation;
- counts per class (or top folder) and the imbalance ratio; size, aspect-ratio, format and
  colour histograms.

Writes data_report.json and a self-contained data_report.html (thumbnails inlined as
base64, every name html-escaped, nothing loaded from the network). User files are only read."""
from __future__ import annotations

import base64
import hashlib
import html
import io
import os
import statistics
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .. import __version__
from ..files import atomic_write_json, atomic_write_text
from . import phash as ph
from .check import CheckReport, check
from .images import JPEG, BadImage, open_checked, to_mode
from .sources import Samples

DECODE_SIDE = 128   # JPEGs are decoded at the largest 1/2..1/8 scale still >= this (hash + stats)
CROP = 0.04         # the second hash trims this share of each side
THUMB = 96
GRAY_TOL = 3        # max |R-G|, |G-B| (of 255) of a colour file whose pixels are gray
MAX_SHOWN = 200     # groups / images shown with thumbnails in the HTML (all are in the JSON)


@dataclass
class ReportSettings:
    radius: int = 8           # Hamming radius of near duplicates (of 64 bits)
    blank_std: float = 4.0    # pixel std (of 255) below which a picture is near-uniform


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise BadImage(f"cannot read ({e.strerror or e})") from None


def examine(path: str) -> tuple[str | None, dict | None]:
    """(why the file is unusable, None) or (None, what the report needs of it)."""
    try:
        data = _read(path)
        img = open_checked(io.BytesIO(data), len(data))
        fmt, (w, h), mode = img.format, img.size, img.mode
        if fmt == JPEG:
            img.draft(img.mode, (DECODE_SIDE, DECODE_SIDE))
        try:
            img.load()
            orientation = img.getexif().get(0x0112, 1)
            if orientation != 1:
                img = ImageOps.exif_transpose(img)
                if orientation in (5, 6, 7, 8):  # a quarter turn: report the size as shown
                    w, h = h, w
            rgb = to_mode(img, 3)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise BadImage(f"cannot decode ({e})") from None
    except BadImage as e:
        return str(e), None
    small = np.asarray(rgb.resize((64, 64), Image.Resampling.BILINEAR), dtype=np.int16)
    gray = small.mean(axis=2)
    cw, ch = rgb.size
    dx, dy = round(cw * CROP), round(ch * CROP)
    hashes = [ph.phash(rgb)]
    if cw - 2 * dx >= 8 and ch - 2 * dy >= 8:
        hashes.append(ph.phash(rgb.crop((dx, dy, cw - dx, ch - dy))))
    colour = "grayscale" if mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F") else (
        "grayscale as colour" if max(int(np.abs(small[..., 0] - small[..., 1]).max()),
                                     int(np.abs(small[..., 1] - small[..., 2]).max())) <= GRAY_TOL else "colour")
    return None, {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "format": fmt or "?",
                  "width": w, "height": h, "mode": mode, "colour": colour, "hashes": hashes,
                  "mean": float(gray.mean()), "std": float(gray.std())}


def thumbnail(path: str, side: int = THUMB) -> str:
    """A data: URI of a small JPEG of the picture ('' if it cannot be read)."""
    try:
        data = _read(path)
        img = open_checked(io.BytesIO(data), len(data))
        img.draft(img.mode, (side, side))
        img = to_mode(ImageOps.exif_transpose(img), 3)
        img.thumbnail((side, side))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=80)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    except (BadImage, OSError, SyntaxError, ValueError):
        return ""


def _histogram(values, edges) -> list[dict]:
    counts, _ = np.histogram(np.asarray(values, dtype=np.float64), bins=np.asarray(edges, dtype=np.float64))
    return [{"from": float(a), "to": float(b), "count": int(c)} for a, b, c in zip(edges, edges[1:], counts)]


def _counts(samples: Samples, good: list[int], root) -> tuple[str, dict]:
    """Images per class (labelled source) or per top-level folder."""
    if samples.labels is not None and samples.classes:
        c = Counter(samples.classes[samples.labels[i]] for i in good)
        return "class", {k: c.get(k, 0) for k in samples.classes}
    base = Path(root).resolve() if root is not None and Path(root).is_dir() else None
    c = Counter()
    for i in good:
        try:
            rel = Path(samples.paths[i]).resolve().relative_to(base)
            c[rel.parts[0] if len(rel.parts) > 1 else "."] += 1
        except (TypeError, ValueError):  # no folder root (a file list), or a file outside it
            c[str(Path(samples.paths[i]).parent)] += 1
    return "folder", dict(sorted(c.items()))


@dataclass
class Analysis:
    check: CheckReport
    content: dict          # what data_report.json holds
    drop: list[int]        # indices into check.samples that --dedupe drops

    def deduped(self) -> Samples:
        """The usable files minus the duplicates --dedupe drops (one kept per group)."""
        drop = set(self.drop)
        return self.check.samples.subset([i for i in self.check.good if i not in drop])


def analyse(source, settings: ReportSettings | None = None, workers: int | None = None,
            progress=None, root=None) -> Analysis:
    """Check every file of `source` (a path or scanned Samples) and build the report's
    content (a JSON-ready dict). Unlabelled files are counted per top folder under `root`
    (default: source when it is a path)."""
    settings = settings or ReportSettings()
    if not 0 <= settings.radius <= 19:
        from ..settings import ConfigError
        raise ConfigError(f"--radius must be between 0 and 19 (of 64 bits), got {settings.radius}")
    t0 = time.perf_counter()
    rep = check(source, workers, progress=progress, examine=examine)
    t_files = time.perf_counter() - t0
    samples, info = rep.samples, rep.info
    good = rep.good

    # exact duplicates: the same bytes
    by_sha: dict[str, list[int]] = {}
    for i in good:
        by_sha.setdefault(info[i]["sha256"], []).append(i)
    exact = [g for g in by_sha.values() if len(g) > 1]
    reps = [g[0] for g in by_sha.values()]  # one file per distinct content, in source order

    # near-uniform pictures hash to noise: reported on their own, kept out of the index
    blank = [i for i in good if info[i]["std"] < settings.blank_std]
    blank_set = set(blank)
    indexed = [i for i in reps if i not in blank_set]
    owner, flat = [], []
    for i in indexed:
        for hv in info[i]["hashes"]:
            owner.append(i)
            flat.append(hv)
    t1 = time.perf_counter()
    pairs = {}
    for a, b, d in ph.near_pairs(flat, settings.radius):
        ia, ib = owner[a], owner[b]
        if ia != ib:
            key = (min(ia, ib), max(ia, ib))
            pairs[key] = min(d, pairs.get(key, 64))
    pos = {i: k for k, i in enumerate(indexed)}
    comps = ph.groups(len(indexed), [(pos[a], pos[b]) for a, b in pairs])
    near = [[indexed[k] for k in c] for c in comps]
    t_index = time.perf_counter() - t1

    # what --dedupe drops: all but the first of exact copies, all but the largest of a near group
    copies = {g[0]: g[1:] for g in exact}
    drop = set(i for g in exact for i in g[1:])
    near_groups = []
    for g in near:
        keep = max(g, key=lambda i: (info[i]["width"] * info[i]["height"], -i))
        drop.update(i for i in g if i != keep)
        drop.update(c for i in g if i != keep for c in copies.get(i, []))
        near_groups.append({"keep": samples.paths[keep], "files": [
            {"path": samples.paths[i], "width": info[i]["width"], "height": info[i]["height"],
             "distance": _dist(info[keep]["hashes"], info[i]["hashes"]),
             "exact_copies": [samples.paths[c] for c in copies.get(i, [])]} for i in g]})

    root = root if root is not None else (source if isinstance(source, (str, Path)) else None)
    kind, counts = _counts(samples, good, root)
    nonzero = [v for v in counts.values() if v > 0]
    ws = [info[i]["width"] for i in good]
    hs = [info[i]["height"] for i in good]
    aspect = [w / h for w, h in zip(ws, hs)]
    short = [min(w, h) for w, h in zip(ws, hs)]
    total = time.perf_counter() - t0
    content = {
        "fastmae": __version__, "source": str(source) if isinstance(source, (str, Path)) else "file list",
        "files": len(samples), "good": len(good), "bad": [{"path": p, "reason": r} for p, r in rep.bad],
        "counts": {"by": kind, "images": counts,
                   "imbalance_ratio": (max(nonzero) / min(nonzero)) if nonzero else None,
                   "empty": [k for k, v in counts.items() if v == 0]},
        "formats": dict(Counter(info[i]["format"] for i in good).most_common()),
        "modes": dict(Counter(info[i]["mode"] for i in good).most_common()),
        "colour": dict(Counter(info[i]["colour"] for i in good).most_common()),
        "sizes": {"width": _summary(ws), "height": _summary(hs), "short_side": _summary(short),
                  "short_side_histogram": _histogram(short, [0, 32, 64, 128, 224, 256, 384, 512, 768, 1024,
                                                             2048, 4096, 1 << 20]) if short else [],
                  "aspect_ratio": _summary(aspect),
                  "aspect_ratio_histogram": _histogram(aspect, [0, 0.5, 0.67, 0.8, 0.95, 1.05, 1.25, 1.5,
                                                               2.0, 1e9]) if aspect else []},
        "exact_duplicates": [[samples.paths[i] for i in g] for g in exact],
        "near_duplicates": near_groups,
        "near_uniform": [{"path": samples.paths[i], "mean": round(info[i]["mean"], 1),
                          "std": round(info[i]["std"], 2)} for i in blank],
        "dedupe": {"drop": len(drop), "exact_copies": sum(len(g) - 1 for g in exact),
                   "near_copies": len(drop) - sum(len(g) - 1 for g in exact)},
        "settings": {"radius": settings.radius, "hash": "DCT pHash 64 bit, whole + 4% border trimmed",
                     "blank_std": settings.blank_std},
        "seconds": {"files": round(t_files, 2), "near_duplicate_index": round(t_index, 3),
                    "total": round(total, 2)},
        "files_per_second": round(len(samples) / t_files, 1) if t_files > 0 else None,
    }
    content["dedupe"]["dropped"] = [samples.paths[i] for i in sorted(drop)]
    return Analysis(rep, content, sorted(drop))


def _dist(a: list[int], b: list[int]) -> int:
    return min(ph.hamming(x, y) for x in a for y in b)


def _summary(values) -> dict | None:
    if not values:
        return None
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


# ---------------------------------------------------------------- HTML

_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}
.bar{background:#4a7bd0;height:12px;display:inline-block}.grp{border:1px solid #ccc;margin:.5em 0;padding:.5em}
figure{display:inline-block;margin:4px;text-align:center;font-size:11px;max-width:110px;word-wrap:break-word}
img{display:block;margin:auto}.keep{outline:3px solid #2a2}code{font-size:12px}"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _bars(rows: list[tuple[str, int]]) -> str:
    top = max((c for _, c in rows), default=0) or 1
    return "<table>" + "".join(
        f"<tr><td>{_e(k)}</td><td>{c}</td><td><span class='bar' style='width:{int(300 * c / top)}px'></span></td></tr>"
        for k, c in rows) + "</table>"


def _hist_rows(hist: list[dict]) -> list[tuple[str, int]]:
    def f(v):
        return "∞" if v >= 1e6 else (f"{v:g}")
    return [(f"{f(b['from'])}–{f(b['to'])}", b["count"]) for b in hist]


def _figure(path: str, caption: str, thumbs: dict, keep: bool = False) -> str:
    src = thumbs.get(path, "")
    img = f"<img src='{src}' alt='{_e(Path(path).name)}'>" if src else "<div>(no preview)</div>"
    return (f"<figure{' class=keep' if keep else ''}>{img}<figcaption>{_e(caption)}<br>"
            f"<code>{_e(path)}</code></figcaption></figure>")


def render_html(c: dict, thumbs: dict) -> str:
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>dataset report: {_e(c['source'])}"
             f"</title><style>{_CSS}</style></head><body>",
             f"<h1>Dataset report</h1><p><code>{_e(c['source'])}</code>: {c['files']} files, {c['good']} usable, "
             f"{len(c['bad'])} unusable; {len(c['exact_duplicates'])} exact-duplicate groups, "
             f"{len(c['near_duplicates'])} near-duplicate groups, {len(c['near_uniform'])} near-uniform "
             f"pictures. <code>--dedupe</code> would drop {c['dedupe']['drop']} files. fastmae {_e(c['fastmae'])}, "
             f"{c['seconds']['total']} s.</p>"]
    cnt = c["counts"]
    ratio = cnt["imbalance_ratio"]
    parts.append(f"<h2>Images per {_e(cnt['by'])}</h2><p>imbalance ratio (largest / smallest): "
                 f"{'n/a' if ratio is None else f'{ratio:.2f}'}</p>" + _bars(list(cnt["images"].items())))
    s = c["sizes"]
    if s["short_side"]:
        parts.append(f"<h2>Sizes</h2><p>width {_e(s['width'])}<br>height {_e(s['height'])}</p>"
                     "<h3>Shorter side (px)</h3>" + _bars(_hist_rows(s["short_side_histogram"])) +
                     "<h3>Aspect ratio (width / height)</h3>" + _bars(_hist_rows(s["aspect_ratio_histogram"])))
    parts.append("<h2>Formats, modes, colour</h2>" + _bars(list(c["formats"].items())) +
                 _bars(list(c["modes"].items())) + _bars(list(c["colour"].items())))
    parts.append(f"<h2>Exact duplicates ({len(c['exact_duplicates'])} groups)</h2>")
    for g in c["exact_duplicates"][:MAX_SHOWN]:
        parts.append("<div class='grp'>" + "".join(_figure(p, "kept" if k == 0 else "copy", thumbs, k == 0)
                                                   for k, p in enumerate(g)) + "</div>")
    parts.append(f"<h2>Near duplicates ({len(c['near_duplicates'])} groups, Hamming radius "
                 f"{c['settings']['radius']} of 64)</h2><p>Green: the file <code>--dedupe</code> keeps (the largest).</p>")
    for g in c["near_duplicates"][:MAX_SHOWN]:
        parts.append("<div class='grp'>" + "".join(
            _figure(f["path"], f"{f['width']}x{f['height']}, distance {f['distance']}"
                    + (f", +{len(f['exact_copies'])} exact" if f["exact_copies"] else ""), thumbs,
                    f["path"] == g["keep"]) for f in g["files"]) + "</div>")
    parts.append(f"<h2>Near-uniform pictures ({len(c['near_uniform'])}; pixel std &lt; "
                 f"{c['settings']['blank_std']})</h2><div class='grp'>" + "".join(
                     _figure(b["path"], f"mean {b['mean']}, std {b['std']}", thumbs)
                     for b in c["near_uniform"][:MAX_SHOWN]) + "</div>")
    parts.append(f"<h2>Unusable files ({len(c['bad'])})</h2><table>" + "".join(
        f"<tr><td><code>{_e(b['path'])}</code></td><td>{_e(b['reason'])}</td></tr>" for b in c["bad"]) + "</table>")
    if any(len(x) > MAX_SHOWN for x in (c["exact_duplicates"], c["near_duplicates"], c["near_uniform"])):
        parts.append(f"<p>Only the first {MAX_SHOWN} of each list are shown; data_report.json has all.</p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def shown_paths(c: dict) -> list[str]:
    paths = [p for g in c["exact_duplicates"][:MAX_SHOWN] for p in g]
    paths += [f["path"] for g in c["near_duplicates"][:MAX_SHOWN] for f in g["files"]]
    paths += [b["path"] for b in c["near_uniform"][:MAX_SHOWN]]
    return list(dict.fromkeys(paths))


def write_report(c: dict, out_dir, workers: int | None = None) -> tuple[Path, Path]:
    """data_report.json and data_report.html in out_dir (thumbnails made in a thread pool)."""
    out = Path(out_dir).expanduser()
    paths = shown_paths(c)
    workers = workers or min(32, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        thumbs = dict(zip(paths, pool.map(thumbnail, paths)))
    j = atomic_write_json(c, out / "data_report.json")
    h = atomic_write_text(render_html(c, thumbs), out / "data_report.html")
    return j, h
