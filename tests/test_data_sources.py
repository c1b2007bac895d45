"""Sources (folders, file lists) and the per-epoch, per-rank order."""
import os

import numpy as np
import pytest

from fastmae.data import Samples, epoch_order, scan
from fastmae.settings import DataError
from tests.test_data_common import make_folder, write_image


@pytest.fixture
def rng():
    return np.random.default_rng(np.random.randint(2**31))


def test_imagefolder_layout_gives_labels(tmp_path, rng):
    paths = make_folder(str(tmp_path), rng, classes=("b_dog", "a_cat"), per_class=3)
    write_image(str(tmp_path / "a_cat" / "deep" / "x.JPEG"), rng)  # recursive, any case
    (tmp_path / "a_cat" / ".hidden.jpg").write_bytes(b"x")  # hidden: skipped
    (tmp_path / "a_cat" / "notes.txt").write_text("not an image")
    (tmp_path / "empty_class").mkdir()  # no images: not a class
    s = scan(tmp_path)
    assert s.classes == ["a_cat", "b_dog"]
    assert len(s) == len(paths) + 1
    assert sorted(s.paths) == sorted(paths + [str(tmp_path / "a_cat" / "deep" / "x.JPEG")])
    for p, y in zip(s.paths, s.labels):
        assert os.path.relpath(p, tmp_path).split(os.sep)[0] == s.classes[y]


def test_flat_folder_is_unlabelled(tmp_path, rng):
    for i, ext in enumerate(("jpg", "jpeg", "png", "bmp", "webp", "tif", "tiff", "PNG")):
        write_image(str(tmp_path / f"{i}.{ext}"), rng, fmt={"jpg": "JPEG", "tif": "TIFF"}.get(ext))
    s = scan(str(tmp_path))
    assert len(s) == 8 and s.labels is None and s.classes is None


def test_file_list_with_names_ints_spaces_and_relative_paths(tmp_path, rng):
    write_image(str(tmp_path / "im" / "a b.jpg"), rng)
    write_image(str(tmp_path / "im" / "c.jpg"), rng)
    lst = tmp_path / "list.txt"
    lst.write_text(f"# comment\nim/a b.jpg\tzebra\n\n{tmp_path}/im/c.jpg ant\n")
    s = scan(lst)
    assert s.paths == [str(tmp_path / "im" / "a b.jpg"), str(tmp_path / "im" / "c.jpg")]
    assert s.classes == ["ant", "zebra"] and s.labels == [1, 0]
    lst.write_text("im/c.jpg 3\nim/a b.jpg\t0\n")
    s = scan(lst)
    assert s.labels == [3, 0] and s.classes == ["0", "1", "2", "3"]
    lst.write_text("im/a b.jpg\nim/c.jpg\n")  # a path with a space and no label
    assert scan(lst).labels is None and len(scan(lst)) == 2


def test_bad_sources_raise_data_error(tmp_path, rng):
    with pytest.raises(DataError, match="does not exist"):
        scan(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        scan(tmp_path / "empty")
    (tmp_path / "blank.txt").write_text("\n# only a comment\n")
    with pytest.raises(DataError, match="names no files"):
        scan(tmp_path / "blank.txt")
    (tmp_path / "mixed.txt").write_text("a.jpg\t1\nb.jpg\n")
    with pytest.raises(DataError, match="some lines have a label"):
        scan(tmp_path / "mixed.txt")
    write_image(str(tmp_path / "one.jpg"), rng)
    with pytest.raises(DataError, match="single image"):
        scan(tmp_path / "one.jpg")
    with pytest.raises(DataError, match="no data source"):
        scan("")


def test_samples_subset():
    s = Samples(["a", "b", "c"], [0, 1, 0], ["x", "y"])
    t = s.subset([2, 1])
    assert t.paths == ["c", "b"] and t.labels == [0, 1] and t.classes == ["x", "y"] and len(t) == 2
    with pytest.raises(DataError):
        Samples(["a"], [0, 1])


@pytest.mark.parametrize("n,world", [(10, 1), (10, 3), (7, 4), (16, 4)])
def test_shards_disjoint_cover_all_and_equal_size(n, world):
    seed = np.random.randint(1000)
    shards = [epoch_order(n, seed=seed, epoch=2, rank=r, world_size=world) for r in range(world)]
    sizes = {len(s) for s in shards}
    assert sizes == {-(-n // world)}  # every rank the same count (padded like DistributedSampler)
    flat = [i for s in shards for i in s]
    assert set(flat) == set(range(n))  # every file read
    assert len(flat) - len(set(flat)) == -(-n // world) * world - n  # only the padding repeats
    if n % world == 0:
        assert len(set(flat)) == len(flat)


def test_order_reshuffles_per_epoch_and_is_pure():
    a = epoch_order(50, seed=3, epoch=0)
    assert a == epoch_order(50, seed=3, epoch=0)
    assert a != epoch_order(50, seed=3, epoch=1)
    assert a != epoch_order(50, seed=4, epoch=0)
    assert sorted(a) == list(range(50))
    assert epoch_order(5, seed=3, epoch=7, shuffle=False) == [0, 1, 2, 3, 4]
    with pytest.raises(DataError):
        epoch_order(5, seed=0, epoch=0, rank=2, world_size=2)
