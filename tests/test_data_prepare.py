"""`fastmae data prepare`: the reduced copy keeps layout and labels, shrinks only what is
larger than --max-size, skips and reports bad files, never touches the source, and a re-run
redoes only what changed (nothing, when nothing did)."""
import hashlib
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

import fastmae.data.prepare as prep
from fastmae.cli import main
from fastmae.data import pretrain_loader, scan
from fastmae.data.images import load_image
from fastmae.data.prepare import output_name, prepare, size_hint, sources_of
from fastmae.data.sources import PREPARED_MANIFEST
from fastmae.settings import ConfigError, DataError

MAX = 64


@pytest.fixture(autouse=True)
def _own_cache(tmp_cache):
    return tmp_cache


def _rng():
    return np.random.default_rng(np.random.randint(2**31))


def _img(rng, w, h, mode="RGB", cell=8):
    low = rng.integers(0, 256, (max(1, h // cell), max(1, w // cell), 3), dtype=np.uint8)
    img = Image.fromarray(low).resize((w, h), Image.BICUBIC)
    return img if mode == "RGB" else img.convert(mode)


def _exif(orientation):
    ex = Image.Exif()
    ex[0x0112] = orientation
    return ex.tobytes()


@pytest.fixture
def source(tmp_path):
    """An ImageFolder source: large and small JPEGs, a PNG, a grayscale image, a rotated
    photo, a nested folder, and two bad files."""
    rng = _rng()
    root = tmp_path / "src"
    for d in ("cat", "dog", "dog/sub", "eel"):
        (root / d).mkdir(parents=True)
    _img(rng, 300, 200).save(root / "cat" / "big.jpg", quality=90)
    _img(rng, 50, 40).save(root / "cat" / "small.jpg", quality=90)  # shorter side 40 <= MAX: copied
    _img(rng, 200, 260).save(root / "dog" / "wide.png")
    _img(rng, 240, 180, "L").save(root / "dog" / "sub" / "gray.jpeg", quality=90)
    _img(rng, 320, 160, cell=40).save(root / "eel" / "turned.jpg", quality=90, exif=_exif(6))
    (root / "eel" / "empty.jpg").write_bytes(b"")
    data = io.BytesIO()
    _img(rng, 200, 150).save(data, "JPEG")
    (root / "eel" / "cut.jpg").write_bytes(data.getvalue()[:-600])  # truncated
    return root


def _tree(root):
    """{relative path: (size, mtime_ns, sha256)} of every file under root."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            st = os.stat(p)
            out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns, hashlib.sha256(open(p, "rb").read()).hexdigest())
    return out


def test_copy_mirrors_layout_and_labels_and_shrinks_only_large_images(source, tmp_path):
    before = _tree(source)
    out = tmp_path / "prep"
    report = prepare(source, out, max_size=MAX, workers=2)
    assert _tree(source) == before  # the source is only read
    assert report.total == 7 and report.written == 4 and report.copied == 1
    assert sorted(os.path.basename(p) for p, _ in report.bad) == ["cut.jpg", "empty.jpg"]
    src, dst = scan(source), scan(out)
    assert dst.classes == src.classes == ["cat", "dog", "eel"]
    good = [i for i, p in enumerate(src.paths) if os.path.basename(p) not in ("cut.jpg", "empty.jpg")]
    want = {os.path.join(out, output_name(os.path.relpath(src.paths[i], source))): src.labels[i] for i in good}
    assert dict(zip(dst.paths, dst.labels)) == want
    assert (out / "dog" / "wide.png.jpg").is_file() and (out / "dog" / "sub" / "gray.jpeg").is_file()
    for p in dst.paths:
        with Image.open(p) as img:
            assert img.format == "JPEG"
    # sizes: shorter side MAX, aspect kept, never upscaled; the small JPEG is byte for byte
    assert Image.open(out / "cat" / "big.jpg").size == (96, 64)
    assert Image.open(out / "dog" / "wide.png.jpg").size == (64, 83)
    assert Image.open(out / "dog" / "sub" / "gray.jpeg").mode == "L"
    assert (out / "cat" / "small.jpg").read_bytes() == (source / "cat" / "small.jpg").read_bytes()
    # the EXIF rotation is applied: 320x160 stored, 160x320 shown, so 64x128 in the copy
    turned = load_image(str(out / "eel" / "turned.jpg"))
    assert turned.size == (64, 128)
    full = load_image(str(source / "eel" / "turned.jpg")).resize((64, 128), Image.BICUBIC)
    diff = np.abs(np.asarray(turned, float) - np.asarray(full, float)).mean()
    upside_down = np.abs(np.asarray(turned, float)[::-1, ::-1] - np.asarray(full, float)).mean()
    assert diff < 4 and upside_down > 4 * diff
    # records point back to the sources
    back = sources_of(out)
    assert back[str((out / "dog" / "wide.png.jpg").resolve())] == str((source / "dog" / "wide.png").resolve())
    assert len(back) == 5


def test_rerun_with_nothing_changed_does_nothing(source, tmp_path, monkeypatch):
    out = tmp_path / "prep"
    prepare(source, out, max_size=MAX)
    before = _tree(out)

    def no_work(*a, **k):
        raise AssertionError("a file was processed again")

    monkeypatch.setattr(prep, "_job", no_work)
    report = prepare(source, out, max_size=MAX)
    assert _tree(out) == before  # not even the manifest is rewritten
    assert (report.written, report.copied, report.unchanged, report.removed) == (0, 0, 5, 0)
    assert len(report.bad) == 2  # still reported, from the manifest, without decoding them


def test_rerun_redoes_only_new_changed_and_removed_files(source, tmp_path):
    rng = _rng()
    out = tmp_path / "prep"
    prepare(source, out, max_size=MAX)
    before = _tree(out)
    t = os.stat(source / "cat" / "big.jpg").st_mtime_ns
    os.utime(source / "cat" / "big.jpg", ns=(t + 10**9, t + 10**9))  # touched, same content
    _img(rng, 400, 300).save(source / "dog" / "wide.png")  # new content
    (source / "cat" / "small.jpg").unlink()  # gone from the source
    _img(rng, 200, 200).save(source / "eel" / "new.jpg")  # new
    report = prepare(source, out, max_size=MAX)
    after = _tree(out)
    assert (report.written, report.copied, report.unchanged, report.removed) == (2, 0, 3, 1)
    assert after["cat/big.jpg"] == before["cat/big.jpg"]  # kept: its content hash did not change
    assert after["dog/wide.png.jpg"] != before["dog/wide.png.jpg"]
    assert Image.open(out / "dog" / "wide.png.jpg").size == (85, 64)
    assert "cat/small.jpg" not in after and "eel/new.jpg" in after
    m = json.loads((out / PREPARED_MANIFEST).read_text())
    assert sorted(m["files"]) == ["cat/big.jpg", "dog/sub/gray.jpeg", "dog/wide.png.jpg", "eel/new.jpg",
                                  "eel/turned.jpg"]
    assert m["files"]["cat/big.jpg"]["mtime_ns"] == t + 10**9
    # other settings: everything is redone
    report = prepare(source, out, max_size=MAX, quality=80)
    assert report.written + report.copied == 5 and report.unchanged == 0


def test_an_interrupted_run_resumes(source, tmp_path, monkeypatch):
    out = tmp_path / "prep"
    monkeypatch.setattr(prep, "SAVE_EVERY_S", 0.0)  # record after every file
    seen = []

    def stop_after_two(n):
        seen.append(n)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare(source, out, max_size=MAX, workers=1, progress=stop_after_two)
    m = json.loads((out / PREPARED_MANIFEST).read_text())
    recorded = len(m["files"]) + len(m["bad"])
    assert 2 <= recorded < 7  # the files finished before the stop (and those in flight) are kept
    report = prepare(source, out, max_size=MAX, workers=1)
    assert report.processed == 7 - recorded  # the rest, and only the rest
    assert report.unchanged == len(m["files"]) and len(scan(out)) == 5


def test_file_list_source_keeps_its_labels(tmp_path):
    rng = _rng()
    (tmp_path / "a" / "x").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    _img(rng, 120, 90).save(tmp_path / "a" / "x" / "1.jpg")
    _img(rng, 90, 120).save(tmp_path / "a" / "2.png")
    _img(rng, 100, 100).save(tmp_path / "b" / "3.jpg")
    lst = tmp_path / "list.txt"
    lst.write_text("a/x/1.jpg\tship\na/2.png\tcar\nb/3.jpg\tship\n")
    out = tmp_path / "prep"
    prepare(lst, out, max_size=MAX)
    src, dst = scan(lst), scan(out)
    assert dst.classes == src.classes == ["car", "ship"] and dst.labels == src.labels
    assert [os.path.relpath(p, out) for p in dst.paths] == ["a/x/1.jpg", "a/2.png.jpg", "b/3.jpg"]
    loader = pretrain_loader(out, img_size=32, batch_size=3, backend="torch", device="cpu", num_workers=0)
    assert next(iter(loader)).shape == (3, 3, 32, 32)


def test_refuses_places_that_would_lose_or_mix_files(source, tmp_path):
    with pytest.raises(ConfigError, match="inside the source"):
        prepare(source, source / "prep", max_size=MAX)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a prepared copy"):
        prepare(source, other, max_size=MAX)
    assert (other / "notes.txt").read_text() == "mine"
    with pytest.raises(ConfigError, match="max-size"):
        prepare(source, tmp_path / "p", max_size=0)
    with pytest.raises(ConfigError, match="quality"):
        prepare(source, tmp_path / "p", quality=101)
    prepare(source, tmp_path / "p", max_size=MAX)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "c").mkdir(parents=True)
    _img(_rng(), 30, 30).save(elsewhere / "c" / "z.jpg")
    with pytest.raises(ConfigError, match="prepared copy of"):
        prepare(elsewhere, tmp_path / "p", max_size=MAX)
    with pytest.raises(DataError, match="does not exist"):
        prepare(tmp_path / "missing", tmp_path / "q")


def test_cli_plain_progress_lines_bad_files_and_exit_codes(source, tmp_path, capsys):
    out = tmp_path / "prep"
    assert main(["data", "prepare", str(source), "--out", str(out), "--max-size", str(MAX), "--workers", "2"]) == 0
    text = capsys.readouterr().out
    assert "preparing: img 7/7" in text and "\r" not in text  # plain lines: stdout is not a terminal
    assert "bad: " in text and "empty.jpg: empty file" in text and "cut.jpg: truncated JPEG" in text
    assert "4 written, 1 copied as they were, 0 unchanged, 0 removed, 2 bad (skipped)" in text
    assert main(["data", "prepare", str(source), "--out", str(out), "--max-size", str(MAX)]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert main(["data", "prepare", str(source), "--out", str(source / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "inside the source" in err[0]


def test_size_hint_only_for_large_unprepared_images(tmp_path):
    rng = _rng()
    (tmp_path / "big" / "c").mkdir(parents=True)
    for i in range(5):
        _img(rng, 1100, 1000).save(tmp_path / "big" / "c" / f"{i}.jpg", quality=70)
    paths = scan(tmp_path / "big").paths
    hint = size_hint(paths, 224, tmp_path / "big")
    assert hint is not None and "1000 px" in hint and "fastmae data prepare" in hint and str(tmp_path / "big") in hint
    assert size_hint(paths, 256) is None  # 1000 <= 4 x 256
    prepare(tmp_path / "big", tmp_path / "prep", max_size=1000)  # a copy that is still large
    assert size_hint(scan(tmp_path / "prep").paths, 224) is None  # a prepared copy is in use


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_shrink_is_pillows_bicubic_and_encodes_as_the_rgb_image_would(mode):
    img = _img(_rng(), 301, 211, mode, cell=3)
    got = prep.shrink(img, (150, 105))
    want = img.resize((150, 105), Image.BICUBIC)
    assert got.size == (150, 105) and got.mode == ("RGBX" if mode == "RGB" else "L")
    diff = np.abs(np.asarray(got.convert(mode), int) - np.asarray(want, int))
    assert diff.max() <= 2 and diff.mean() < 0.3
    a, b = io.BytesIO(), io.BytesIO()
    got.save(a, "JPEG", quality=95)
    got.convert(mode).save(b, "JPEG", quality=95)
    assert a.getvalue() == b.getvalue()
