"""The built-in inspection dataset: deterministic pictures, masks where the defects are,
the MVTec AD layout, and registration under builtin_dataset("inspection")."""
import hashlib

import numpy as np
import pytest
from PIL import Image

from fastmae.data import builtin_dataset
from fastmae.data import inspection


@pytest.mark.parametrize("split", ["train/good", "test/scratch", "test/stain", "test/missing",
                                   "test/contamination"])
def test_render_is_deterministic_with_masks_where_defects_are(split):
    i = int(np.random.default_rng().integers(0, 40))
    img, mask = inspection.render(split, i)
    img2, mask2 = inspection.render(split, i)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert np.array_equal(img, img2) and np.array_equal(mask, mask2)
    assert not np.array_equal(img, inspection.render(split, i + 1)[0])
    if split.endswith("good"):
        assert not mask.any()
    else:
        assert 3 <= mask.sum() <= 0.2 * mask.size  # a defect, not the whole part


def test_defect_changes_the_pixels_under_its_mask():
    img, mask = inspection.render("test/stain", 3)
    assert mask.any()
    good = inspection.good_image(0)
    assert good.shape == (64, 64, 3) and not np.array_equal(good, inspection.good_image(1))


def test_layout_and_bytes_are_stable(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTMAE_CACHE", str(tmp_path))
    monkeypatch.setattr(inspection, "COUNTS", {k: 2 for k in inspection.COUNTS})
    root = builtin_dataset("inspection")
    assert root == tmp_path / inspection.VERSION
    for d in inspection.DEFECTS:
        assert sorted(p.name for p in (root / "test" / d).iterdir()) == ["000.png", "001.png"]
        m = np.asarray(Image.open(root / "ground_truth" / d / "001_mask.png"))
        assert m.shape == (64, 64) and set(np.unique(m)) <= {0, 255} and m.max() == 255
    assert len(list((root / "train" / "good").iterdir())) == 2
    first = hashlib.sha256((root / "test" / "scratch" / "001.png").read_bytes()).hexdigest()
    again = tmp_path / "again"
    inspection._generate(again)
    assert hashlib.sha256((again / "test" / "scratch" / "001.png").read_bytes()).hexdigest() == first
