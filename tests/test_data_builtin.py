"""The built-in synthetic dataset: layout, counts, determinism, atomic generation."""
import hashlib
import io
import os

import numpy as np
import pytest
from PIL import Image

from fastmae.data import builtin, builtin_dataset, scan
from fastmae.settings import DataError


def _digest(root):
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            p = os.path.join(dirpath, name)
            h.update(os.path.relpath(p, root).encode() + open(p, "rb").read())
    return h.hexdigest()


def test_builtin_layout_counts_and_determinism(tmp_cache):
    train = builtin_dataset("train")
    assert train == tmp_cache / "builtin-v1" / "train"
    val = builtin_dataset("val")
    assert sorted(os.listdir(tmp_cache)) == ["builtin-v1"]  # no temporary folder left behind
    s, v = scan(train), scan(val)
    assert len(s) == 2000 and len(v) == 500
    assert s.classes == v.classes == sorted(builtin.CLASSES)
    assert np.bincount(s.labels).tolist() == [200] * 10
    img = Image.open(s.paths[0])
    assert img.size == (64, 64) and img.mode == "RGB" and img.format == "JPEG"
    # Same seed, same bytes: re-render a few images and encode them as generation does.
    for split, i in (("train", 0), ("train", 1234), ("val", 77)):
        label = i % 10
        buf = io.BytesIO()
        builtin.render(label, np.random.default_rng([builtin._SPLIT_SEED[split], i])).save(buf, "JPEG", quality=92)
        path = tmp_cache / "builtin-v1" / split / builtin.CLASSES[label] / f"{i:05d}.jpg"
        assert path.read_bytes() == buf.getvalue()
    # train and val are different pictures
    assert (tmp_cache / "builtin-v1/train/bar/00000.jpg").read_bytes() != (tmp_cache / "builtin-v1/val/bar/00000.jpg").read_bytes()
    # a second call reuses the dataset (no regeneration)
    mtime = os.stat(s.paths[5]).st_mtime_ns
    assert builtin_dataset("train") == train and os.stat(s.paths[5]).st_mtime_ns == mtime


def test_builtin_classes_differ_by_shape_not_colour():
    # Mean colour carries (almost) no class information: the class is the shape.
    means = np.array([[np.asarray(builtin.render(c, np.random.default_rng([9, c, k])), np.float64).mean()
                       for k in range(30)] for c in range(10)])
    assert means.mean(1).std() < 0.35 * means.std(1).mean()
    a = np.asarray(builtin.render(3, np.random.default_rng([5, 1])), np.int32)
    b = np.asarray(builtin.render(3, np.random.default_rng([5, 2])), np.int32)
    assert np.abs(a - b).mean() > 10  # nuisance variation between samples of a class


def test_builtin_bad_split(tmp_cache):
    with pytest.raises(DataError, match="splits train, val"):
        builtin_dataset("test")


@pytest.mark.slow
def test_builtin_generation_is_byte_identical(tmp_path, monkeypatch):
    digests = []
    for k in range(2):
        monkeypatch.setenv("FASTMAE_CACHE", str(tmp_path / f"c{k}"))
        digests.append(_digest(builtin_dataset("train").parent))
    assert digests[0] == digests[1]
