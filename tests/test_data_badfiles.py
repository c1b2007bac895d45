"""Bad files never stop a run: the loaders skip and report them (up front from headers,
or when decoding fails), `fastmae data check` lists them; user files are never changed."""
import argparse
import io
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from fastmae.data import classification_loader, dali_available, pretrain_loader, scan
from fastmae.data.base import DataWarning
from fastmae.data.images import load_image
from tests.test_data_common import make_bad_files, make_folder, snapshot, write_image

@pytest.fixture(autouse=True)
def _own_cache(tmp_cache):
    """Loaders cache header verdicts in $FASTMAE_CACHE: keep each test's to itself."""
    return tmp_cache


needs_dali = pytest.mark.skipif(not dali_available(), reason="NVIDIA DALI is not installed")
BACKENDS = ["torch", pytest.param("dali", marks=needs_dali)]


def corrupt_png(path, rng):
    """A PNG whose header and IEND are fine but whose pixel data is garbage: only decoding finds it."""
    img = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    data = bytearray(buf.getvalue())
    i = data.index(b"IDAT")
    for k in range(i + 40, i + 200):
        data[k] ^= 0x5A
    with open(path, "wb") as f:
        f.write(bytes(data))


@pytest.fixture
def mixed(tmp_path):
    """root/good/*: 8 good images; root/bad/*: one file of each bad kind + a corrupt PNG."""
    rng = np.random.default_rng(np.random.randint(2**31))
    root = tmp_path / "data"
    make_folder(str(root), rng, classes=("good",), per_class=8, size=(36, 30))
    expected = make_bad_files(str(root / "bad"), rng)
    corrupt_png(str(root / "bad" / "corrupt.png"), rng)
    return root, expected


@pytest.mark.parametrize("backend", BACKENDS)
def test_header_bad_files_skipped_up_front(mixed, backend):
    root, expected = mixed
    before = snapshot(root)
    with pytest.warns(DataWarning, match=f"skipped {len(expected)} of {len(expected) + 9}"):
        loader = pretrain_loader(root, img_size=8, batch_size=3, backend=backend, device="cpu", num_workers=0)
    reasons = {os.path.basename(p): r for p, r in loader.skipped}
    assert set(reasons) == set(expected)  # corrupt.png passes the header check
    for name, words in expected.items():
        assert words in reasons[name].lower()
    with pytest.warns(DataWarning, match="corrupt.png"):
        batches = list(loader)
    assert len(batches) == 9 // 3 and all(b.shape == (3, 3, 8, 8) for b in batches)
    assert any(os.path.basename(p) == "corrupt.png" for p, _ in loader.skipped)
    assert snapshot(root) == before


@pytest.mark.parametrize("backend,workers", [("torch", 0), ("torch", 2), pytest.param("dali", 1, marks=needs_dali)])
def test_decode_time_skips_keep_batches_full(mixed, backend, workers):
    root, expected = mixed
    before = snapshot(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        loader = classification_loader(root, train=True, img_size=8, batch_size=5, backend=backend,
                                       device="cpu", num_workers=workers, validate=False)
        assert loader.skipped == [] and len(loader) == 15 // 5
        batches = list(loader)
    assert [len(y) for _, y in batches] == [5, 5, 5]
    good = loader.classes.index("good")
    assert all((y == good).all() for _, y in batches)  # every bad file was replaced by a good one
    assert {os.path.basename(p) for p, _ in loader.skipped} == set(expected) | {"corrupt.png"}
    assert snapshot(root) == before


@needs_dali
def test_dali_converts_odd_good_files_like_pillow(tmp_path):
    """GIF named .jpg, CMYK TIFF and JPEG, grayscale JPEG, 16-bit PNG, RGBA PNG: the DALI
    loader's output equals its output for the same pixels as a plain RGB PNG."""
    from tests.test_data_common import png16

    rng = np.random.default_rng(np.random.randint(2**31))
    c = tmp_path / "c"
    write_image(str(c / "a.jpg"), rng, (40, 32), fmt="GIF")
    write_image(str(c / "b.tif"), rng, (40, 32), mode="CMYK")
    write_image(str(c / "c.jpg"), rng, (40, 32), mode="CMYK")
    write_image(str(c / "d.jpg"), rng, (40, 32), mode="L")
    write_image(str(c / "f.png"), rng, (40, 32), mode="RGBA")
    png16(str(c / "e.png"), rng.integers(0, 256, (32, 40, 3), dtype=np.uint16) * 257)
    names = ["a.jpg", "b.tif", "c.jpg", "d.jpg", "e.png", "f.png"]
    for name in names:
        Image.fromarray(np.asarray(load_image(str(c / name)))).save(c / f"{name}.ref.png")
    kw = dict(train=False, img_size=16, batch_size=12, device="cpu", num_workers=0, backend="dali")
    loader = classification_loader(tmp_path, **kw)
    got = [os.path.basename(p) for p in loader.samples.paths]
    assert got == sorted(names + [f"{n}.ref.png" for n in names])
    x, _ = next(iter(loader))
    assert loader.skipped == []
    for k in range(0, 12, 2):
        torch.testing.assert_close(x[k], x[k + 1], rtol=0, atol=0, msg=got[k])


def test_all_files_bad_is_a_data_error(tmp_path):
    make_bad_files(str(tmp_path / "d"), np.random.default_rng(0))
    from fastmae.settings import DataError
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        with pytest.raises(DataError, match="none of the 6 image files"):
            pretrain_loader(tmp_path / "d", backend="torch", device="cpu")


# --- fastmae data check ---------------------------------------------------------------


def _check(argv):
    from fastmae.commands import data

    p = argparse.ArgumentParser()
    data.add_arguments(p)
    return data.run(p.parse_args(argv))


def test_data_check_reports_bad_files_and_writes_clean_list(mixed, capsys, tmp_path):
    root, expected = mixed
    before = snapshot(root)
    out = tmp_path / "clean.txt"
    assert _check(["check", str(root), "--out", str(out), "--workers", "3"]) == 1
    text = capsys.readouterr().out
    bad_lines = [ln for ln in text.splitlines() if ln.startswith("bad: ")]
    assert len(bad_lines) == len(expected) + 1
    for name, words in {**expected, "corrupt.png": "cannot decode"}.items():
        assert any(name in ln and words in ln.lower() for ln in bad_lines), name
    assert f"checked {len(expected) + 9} image files" in text and "8 good" in text and f"{len(expected) + 1} bad" in text
    clean = scan(out)
    assert len(clean) == 8 and clean.classes == ["good"]
    assert sorted(clean.paths) == sorted(str(p) for p in (root / "good").iterdir())
    assert snapshot(root) == before
    assert _check(["check", str(out)]) == 0  # the clean list is a usable source, all good
    assert "8 good, 0 bad" in capsys.readouterr().out


def test_data_check_cli_exit_codes(tmp_path, capsys):
    from fastmae.cli import main

    make_folder(str(tmp_path / "ok"), np.random.default_rng(1), per_class=2)
    assert main(["data", "check", str(tmp_path / "ok")]) == 0
    assert "4 good, 0 bad" in capsys.readouterr().out
    assert main(["data", "check", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_clean_list_keeps_label_indices(tmp_path):
    from fastmae.data.check import write_list

    rng = np.random.default_rng(2)
    for classes in (("1", "10", "2"), ("b", "a")):
        root = tmp_path / "_".join(classes)
        make_folder(str(root), rng, classes=classes, per_class=1)
        s = scan(root)
        write_list(s, str(tmp_path / "l.txt"))
        back = scan(tmp_path / "l.txt")
        assert back.paths == s.paths and back.labels == s.labels


@needs_dali
def test_dali_failure_on_a_good_file_reroutes_it_through_pillow(tmp_path, monkeypatch):
    import fastmae.data.dali as dali_mod

    monkeypatch.setattr(dali_mod, "_dali_native", lambda head: True)  # hand DALI a GIF: it fails
    rng = np.random.default_rng(3)
    for i in range(3):
        write_image(str(tmp_path / "c" / f"{i}.jpg"), rng, (40, 32))
    write_image(str(tmp_path / "c" / "3.jpg"), rng, (40, 32), fmt="GIF")
    loader = classification_loader(tmp_path, train=False, img_size=16, batch_size=4, backend="dali",
                                   device="cpu", num_workers=1)
    x, y = next(iter(loader))
    assert x.shape == (4, 3, 16, 16) and loader.skipped == [] and 3 in loader._via_pillow


def test_header_verdicts_are_cached_until_a_file_changes(mixed, tmp_cache, monkeypatch):
    import fastmae.data.loader as loader_mod

    root, expected = mixed
    kw = dict(img_size=8, batch_size=2, backend="torch", device="cpu", num_workers=0)
    with pytest.warns(DataWarning):
        first = pretrain_loader(root, **kw).skipped
    assert len(list((tmp_cache / "checked").iterdir())) == 1

    def no_call(path):
        raise AssertionError("headers were checked again")

    monkeypatch.setattr(loader_mod, "header_problem", no_call)
    with pytest.warns(DataWarning):
        assert pretrain_loader(root, **kw).skipped == first
    os.utime(root / "bad" / "empty.jpg", ns=(1, 1))  # a changed file: check again
    with pytest.raises(AssertionError, match="checked again"):
        pretrain_loader(root, **kw)
