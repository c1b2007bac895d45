"""`fastmae data prepare`: a reduced-resolution copy of a source for long runs. Each image is
written with its shorter side at most max_size (never upscaled) as a JPEG, EXIF orientation
applied, in the source's own layout, so the copy is a data source like the original (labels
from the same class folders; a file-list source gets a file list in the copy). A manifest
in the copy records, for every output, its source file's path, size, modification time and
SHA-256: a re-run only redoes new and changed files (and removes the outputs of files that
left the source), and a re-run on an unchanged source writes nothing. The source is only
read. Outputs and the manifest are written atomically, the manifest every few seconds, so
an interrupted run resumes where it stopped."""
from __future__ import annotations

import hashlib
import io
import json
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from ..files import atomic_save_file, atomic_write_text
from ..settings import ConfigError, DataError
from .images import BadImage, decode
from .reduced import Opened, jpeg_scale, kernel_input, oriented_reduced
from .sources import PREPARED_LIST, PREPARED_MANIFEST, Samples, is_int, scan

FORMAT = "fastmae-prepared"
VERSION = 1
SAVE_EVERY_S = 5.0  # manifest checkpoints while running (resume loses at most this much work)
HINT_FACTOR = 4  # hint when the median shorter side exceeds this many times img_size
_GRAY = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_JPEG_NAMES = (".jpg", ".jpeg")


@dataclass
class PrepareReport:
    out: Path
    total: int = 0  # source files
    written: int = 0  # outputs encoded this run
    copied: int = 0  # JPEGs already small enough, copied byte for byte
    unchanged: int = 0  # outputs kept from an earlier run
    removed: int = 0  # outputs of files no longer in the source, deleted
    processed: int = 0  # files read this run (new or changed size/time)
    bad: list[tuple[str, str]] = field(default_factory=list)  # (source path, reason)
    seconds: float = 0.0

    @property
    def done(self) -> int:
        return self.written + self.copied


def output_name(rel: str) -> str:
    """The copy's name for the source file `rel`: a JPEG keeps its name; any other file gets
    `.jpg` appended (x.png -> x.png.jpg: names stay unique and say where they came from)."""
    return rel if rel.lower().endswith(_JPEG_NAMES) else rel + ".jpg"


def _layout(samples: Samples, source: Path) -> tuple[str, list[str]]:
    """'folder' or 'list', and each file's path relative to the copy's root: relative to a
    folder source, or to the common folder of a file list's files."""
    if source.is_dir():
        root = source
        kind = "folder"
    else:
        root = Path(os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in samples.paths]))
        kind = "list"
    return kind, [os.path.relpath(os.path.abspath(p), root) for p in samples.paths]


def _check_places(samples: Samples, source: Path, out: Path) -> None:
    dst = out.resolve()
    if source.is_dir():
        src = source.resolve()
        if dst == src or src in dst.parents:
            raise ConfigError(f"--out {out} is inside the source {src}: the copy would become part of "
                              "the source; choose a folder outside it")
        if dst in src.parents:
            raise ConfigError(f"the source {src} is inside --out {out}; choose another folder")
    else:
        inside = next((p for p in samples.paths if dst in Path(p).resolve().parents), None)
        if inside is not None:
            raise ConfigError(f"the source file {inside} is inside --out {out}; choose another folder")
    if dst.exists() and not dst.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    if dst.is_dir() and any(dst.iterdir()) and not (dst / PREPARED_MANIFEST).is_file():
        raise ConfigError(f"--out {out} is not empty and is not a prepared copy (no {PREPARED_MANIFEST}); "
                          "choose a new folder, prepare never overwrites other files")


def _load_manifest(out: Path, source: Path) -> dict | None:
    path = out / PREPARED_MANIFEST
    if not path.is_file():
        return None
    try:
        m = json.loads(path.read_text())
        if m.get("format") != FORMAT or not isinstance(m.get("files"), dict):
            raise ValueError("not a prepare manifest")
    except (OSError, ValueError) as e:
        raise DataError(f"{path} cannot be read ({e}); delete the folder {out} and prepare again") from None
    if m.get("source") != str(source.resolve()):
        raise ConfigError(f"{out} is a prepared copy of {m.get('source')}, not of {source.resolve()}; "
                          "choose another --out")
    return m


def _image_channels(img: Image.Image) -> int:
    return 1 if img.mode in _GRAY else 3


def shrink(img: Image.Image, size) -> Image.Image:
    """An RGB or L image resized to size (w, h) with Pillow's antialiased bicubic filter, in
    torch's vectorised uint8 kernel: the same pixels as Image.resize(size, BICUBIC) give
    (within 2 levels), at a fifth of its cost. RGB comes back as RGBX (Pillow's own layout
    for RGB, mapped without a copy), which JPEG writes byte for byte as it writes RGB."""
    out = torch.ops.aten._upsample_bicubic2d_aa(kernel_input(img), [size[1], size[0]], False, None, None)[0]
    if img.mode == "L":
        return Image.fromarray(out[0].numpy())
    return Image.frombuffer("RGBX", size, out.permute(1, 2, 0).contiguous().numpy(), "raw", "RGBX", 0, 1)


def convert(data: bytes, dst: Path, max_size: int, quality: int) -> dict:
    """Write the source image `data` to `dst` with its shorter side <= max_size: a JPEG
    already that small is copied as is (after a check decode); anything else is decoded (a
    large JPEG at the smallest DCT scale, 1/4, 3/8 or 1/2, that keeps the shorter side
    >= max_size), oriented, resized once with antialiased bicubic (shrink(): Pillow's default
    filter for downscaling, sharper than area averaging and, in torch's kernel, cheaper) and
    encoded at `quality` (baseline, no optimize pass). Returns the output's record; BadImage
    if the file cannot be used."""
    with Opened(data) as src:
        w, h = src.size
        short = min(w, h)
        if src.is_jpeg and short <= max_size:
            decode(io.BytesIO(data), len(data), fast=True)  # `data check`'s decode: corrupt data shows
            atomic_save_file(lambda tmp: tmp.write_bytes(data), dst)
            return {"width": w, "height": h, "copied": True}
        f = min(1.0, max_size / short)
        tw, th = max(1, round(w * f)), max(1, round(h * f))
        d = jpeg_scale(w, h, max_size) if src.reducible else 1
        img = oriented_reduced(src, d, _image_channels(src.img))
        if img.size != (tw, th):
            img = shrink(img, (tw, th))
    atomic_save_file(lambda tmp: img.save(tmp, "JPEG", quality=quality), dst)
    return {"width": tw, "height": th, "copied": False}


def _job(path: str, dst: Path, old: dict | None, max_size: int, quality: int) -> tuple[str, dict]:
    """('kept' | 'written' | 'bad', record) for one source file whose size or time changed
    (or that is new): same content as recorded -> kept, else converted."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
    except OSError as e:
        return "bad", {"reason": f"cannot read ({e.strerror or e})"}
    rec = {"source": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
           "sha256": hashlib.sha256(data).hexdigest()}
    if old is not None and old.get("sha256") == rec["sha256"] and "reason" not in old and dst.is_file():
        return "kept", {**old, **rec}
    try:
        return "written", {**rec, **convert(data, dst, max_size, quality)}
    except BadImage as e:
        return "bad", {**rec, "reason": str(e)}


def _record(result, path: str, name: str, files: dict, bad_records: dict, report: PrepareReport) -> None:
    verdict, rec = result
    key = os.path.abspath(path)
    if verdict == "bad":
        report.bad.append((path, rec["reason"]))
        files.pop(name, None)
        if "size" in rec:
            bad_records[key] = {k: rec[k] for k in ("size", "mtime_ns", "sha256", "reason")}
        return
    bad_records.pop(key, None)
    files[name] = {k: rec[k] for k in ("source", "size", "mtime_ns", "sha256", "width", "height")}
    if verdict == "kept":
        report.unchanged += 1
    elif rec["copied"]:
        report.copied += 1
    else:
        report.written += 1


def _list_text(samples: Samples, names: list[str], good: set[str]) -> str:
    """The copy's file list (paths relative to it, the source's labels), as write_list does."""
    by_index = samples.classes is None or any(is_int(c) for c in samples.classes)
    lines = []
    for i, name in enumerate(names):
        if name not in good:
            continue
        if samples.labels is None:
            lines.append(name)
        else:
            y = samples.labels[i]
            lines.append(f"{name}\t{y if by_index else samples.classes[y]}")
    return "\n".join(lines) + "\n"


def prepare(source, out, *, max_size: int = 512, quality: int = 95, workers: int | None = None,
            progress=None) -> PrepareReport:
    """Make or bring up to date the reduced copy of `source` in `out` (see the module doc).
    `progress(n)` is called as files finish."""
    if not isinstance(max_size, int) or max_size < 8:
        raise ConfigError(f"--max-size must be an integer of at least 8 pixels, got {max_size!r}")
    if not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ConfigError(f"--quality must be an integer from 1 to 100, got {quality!r}")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"--workers must be at least 1, got {workers!r}")
    t0 = time.perf_counter()
    source, out = Path(source).expanduser(), Path(out).expanduser()
    samples = scan(source)
    _check_places(samples, source, out)
    kind, rels = _layout(samples, source)
    names = [output_name(r) for r in rels]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DataError(f"two source files map to the same output name {dup!r}")
    manifest = _load_manifest(out, source)
    same_settings = (manifest is not None and manifest.get("max_size") == max_size
                     and manifest.get("quality") == quality)
    old_files = manifest["files"] if manifest else {}
    old_bad = manifest.get("bad", {}) if manifest else {}
    files = dict(old_files) if same_settings else {}
    bad_records = dict(old_bad) if same_settings else {}
    report = PrepareReport(out=out, total=len(samples))

    jobs = []
    for path, name in zip(samples.paths, names):
        key = os.path.abspath(path)
        try:
            st = os.stat(path)
        except OSError as e:
            report.bad.append((path, f"cannot read ({e.strerror or e})"))
            continue
        old = files.get(name)
        if old is not None and old["size"] == st.st_size and old["mtime_ns"] == st.st_mtime_ns \
                and (out / name).is_file():
            report.unchanged += 1
            continue
        b = bad_records.get(key)
        if b is not None and b["size"] == st.st_size and b["mtime_ns"] == st.st_mtime_ns:
            report.bad.append((path, b["reason"]))
            continue
        jobs.append((path, name, old if old is not None else b))

    report.processed = len(jobs)
    # outputs of files that left the source (only files this manifest wrote are touched)
    wanted = set(names)
    stale = [n for n in old_files if n not in wanted]
    for n in stale:
        try:
            (out / n).unlink()
        except FileNotFoundError:
            pass
        files.pop(n, None)
    report.removed = len(stale)
    present = {os.path.abspath(p) for p in samples.paths}
    bad_records = {k: v for k, v in bad_records.items() if k in present}

    changed = bool(jobs or stale or manifest is None or not same_settings or len(bad_records) != len(old_bad))
    if not changed:
        report.seconds = time.perf_counter() - t0
        return report

    out.mkdir(parents=True, exist_ok=True)
    state = {"format": FORMAT, "version": VERSION, "source": str(source.resolve()), "kind": kind,
             "max_size": max_size, "quality": quality, "files": files, "bad": bad_records}
    if kind == "list":
        state["list"] = PREPARED_LIST

    def save():
        atomic_write_text(json.dumps(state, indent=1, sort_keys=True), out / PREPARED_MANIFEST)

    save()  # settings first: a run stopped now still knows what this folder is
    last = time.perf_counter()
    workers = workers or max(1, min(32, len(os.sched_getaffinity(0))))
    with ThreadPoolExecutor(workers) as pool:
        futures = {pool.submit(_job, path, out / name, old, max_size, quality): (path, name)
                   for path, name, old in jobs}
        recorded = set()
        try:
            for fut in as_completed(futures):
                path, name = futures[fut]
                _record(fut.result(), path, name, files, bad_records, report)
                recorded.add(fut)
                if progress:
                    progress(1)
                if time.perf_counter() - last > SAVE_EVERY_S:
                    save()
                    last = time.perf_counter()
        except BaseException:  # Ctrl-C: stop queued files, keep what is done for the next run
            for fut in futures:
                fut.cancel()
            for fut in futures:
                if fut not in recorded and fut.done() and not fut.cancelled() and fut.exception() is None:
                    _record(fut.result(), *futures[fut], files, bad_records, report)
            save()
            raise
    save()
    if kind == "list":
        text = _list_text(samples, names, set(files))
        lst = out / PREPARED_LIST
        if not lst.is_file() or lst.read_text() != text:
            atomic_write_text(text, lst)
    order = {p: i for i, p in enumerate(samples.paths)}
    report.bad.sort(key=lambda b: order.get(b[0], 0))
    report.seconds = time.perf_counter() - t0
    return report


def sources_of(prepared) -> dict[str, str]:
    """Each image of a prepared copy (absolute path) -> the source file it was made from."""
    root = Path(prepared).expanduser()
    root = root if root.is_dir() else root.parent
    m = json.loads((root / PREPARED_MANIFEST).read_text())
    return {str((root / name).resolve()): rec["source"] for name, rec in m["files"].items()}


def is_prepared(paths) -> bool:
    """Whether the image files `paths` come from a prepared copy (a manifest above them)."""
    if not paths:
        return False
    p = Path(os.path.abspath(paths[0])).parent
    for folder in [p, *p.parents][:32]:
        if (folder / PREPARED_MANIFEST).is_file():
            return True
    return False


def size_hint(paths, img_size: int, source=None, sample: int = 32) -> str | None:
    """A one-line hint when the images are much larger than training needs (median shorter
    side > HINT_FACTOR x img_size, from the headers of `sample` evenly spaced files) and
    they are not a prepared copy; None otherwise."""
    paths = list(paths)
    if not paths or is_prepared(paths):
        return None
    step = max(1, len(paths) // sample)
    sides = []
    for p in paths[::step][:sample]:
        try:
            with Image.open(p) as img:
                sides.append(min(img.size))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            continue
    if not sides:
        return None
    median = statistics.median(sides)
    if median <= HINT_FACTOR * img_size:
        return None
    target = max(512, 2 * img_size)
    return (f"hint: these images are large (median shorter side {median:.0f} px, {median / img_size:.1f}x "
            f"--img-size {img_size}), so decoding them limits training speed: run `fastmae data prepare "
            f"{source or 'SOURCE'} --max-size {target} --out PREPARED` once and train with --data PREPARED (docs/data.md)")
