"""PRO (per-region overlap, MVTec AD) and the 8-connected labelling it rests on."""
import math

import numpy as np
import pytest
import torch

from fastmae.monitor.metrics import auroc, label_regions, pixel_auroc, pro_auc


def _brute_pro_auc(h, m, max_fpr):
    """Threshold by threshold, straight from the definition (slow; tiny inputs only)."""
    regions = []
    for i in range(len(m)):
        lab, n = label_regions(m[i])
        regions += [(i, lab == k) for k in range(1, n + 1)]
    neg = ~m
    pts = [(0.0, 0.0)]
    for t in np.unique(h)[::-1]:
        pred = h >= t
        pts.append(((pred & neg).sum() / neg.sum(),
                    np.mean([(pred[i] & r).sum() / r.sum() for i, r in regions])))
    x, y = np.array(pts).T
    area = 0.0
    for k in range(1, len(x)):  # trapezoids, the one crossing max_fpr cut linearly
        if x[k - 1] >= max_fpr:
            break
        x1, y1 = x[k], y[k]
        if x1 > max_fpr:
            y1 = y[k - 1] + (y[k] - y[k - 1]) * (max_fpr - x[k - 1]) / (x[k] - x[k - 1])
            x1 = max_fpr
        area += (x1 - x[k - 1]) * (y1 + y[k - 1]) / 2
    return area / max_fpr


def test_label_regions_hand_made_mask():
    m = np.zeros((6, 7), bool)
    m[0, 0] = m[1, 1] = True            # touching diagonally: one region under 8-connectivity
    m[0, 3] = m[0, 4] = m[1, 4] = True  # an L: one region
    m[4:6, 0:2] = True                  # a 2x2 block, apart from the rest
    m[3, 6] = m[5, 6] = True            # same column, a row apart: two regions
    lab, n = label_regions(m)
    assert n == 5
    want = np.zeros((6, 7), np.int64)
    want[0, 0] = want[1, 1] = 1
    want[0, 3] = want[0, 4] = want[1, 4] = 2
    want[3, 6] = 3
    want[4:6, 0:2] = 4
    want[5, 6] = 5
    np.testing.assert_array_equal(lab, want)
    lab, n = label_regions(np.zeros((3, 4), bool))
    assert n == 0 and not lab.any()
    with pytest.raises(ValueError, match="2-D"):
        label_regions(np.ones((2, 3, 4), bool))


def test_label_regions_matches_scipy():
    nd = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng()
    for _ in range(60):
        shape = tuple(rng.integers(1, 40, size=2))
        m = rng.random(shape) < rng.uniform(0.05, 0.7)
        lab, n = label_regions(m)
        ref, k = nd.label(m, structure=np.ones((3, 3)))
        assert n == k
        np.testing.assert_array_equal(lab, ref)


def test_label_regions_one_long_snake():
    # A serpentine path: one region that the labelling must join end to end.
    m = np.zeros((41, 30), bool)
    m[::2] = True
    m[1::4, -1] = True
    m[3::4, 0] = True
    lab, n = label_regions(m)
    assert n == 1 and (lab[m] == 1).all() and (lab[~m] == 0).all()


def _two_regions(rng, sizes=((3, 3), (3, 3))):
    m = torch.zeros(2, 16, 16, dtype=torch.bool)
    (a, b), (c, d) = sizes
    m[0, 2:2 + a, 2:2 + b] = True
    m[1, 8:8 + c, 9:9 + d] = True
    h = torch.rand(2, 16, 16)
    return h, m


def test_pro_perfect_and_inverted():
    h, m = _two_regions(np.random.default_rng())
    perfect = torch.where(m, 1.0 + torch.rand(m.shape), torch.rand(m.shape))
    assert pro_auc(perfect, m) == pytest.approx(1.0, abs=1e-12)
    inverted = torch.where(m, torch.rand(m.shape), 1.0 + torch.rand(m.shape))
    assert pro_auc(inverted, m) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("sizes", [((3, 3), (3, 3)), ((8, 7), (1, 2)), ((1, 2), (8, 7))])
def test_pro_one_region_found_one_missed_is_half(sizes):
    # Region means, not pixel counts: the score is 0.5 whichever region is the larger.
    h, m = _two_regions(np.random.default_rng(), sizes)
    found = torch.zeros_like(m)
    found[0] = m[0]
    heat = torch.where(found, 2.0 + torch.rand(m.shape), 0.5 + 0.5 * torch.rand(m.shape))
    heat = torch.where(m & ~found, torch.rand(m.shape) * 0.4, heat)
    assert pro_auc(heat, m) == pytest.approx(0.5, abs=1e-12)
    assert pro_auc(heat, m, max_fpr=1.0) == pytest.approx(0.5, abs=1e-12)


def test_pro_hand_computed_with_ties():
    # 12 pixels: one region of 2 pixels, 10 negatives. Descending thresholds give the curve
    # (0,0) (.1,0) (.1,.5) (.2,.5) (.4,1) (1,1); the tie at 0.5 (two negatives and a region pixel)
    # is a sloped segment that crosses FPR 0.3 at PRO 0.75.
    # Area to 0.3: 0.1*0.5 + 0.1*(0.5+0.75)/2 = 0.1125 -> 0.375; to 1.0: 0.8.
    h = torch.tensor([[[0.8, 0.5, 0.9, 0.7],
                       [0.5, 0.5, 0.1, 0.1],
                       [0.1, 0.1, 0.1, 0.1]]])
    m = torch.zeros(1, 3, 4, dtype=torch.bool)
    m[0, 0, 0] = m[0, 0, 1] = True
    assert pro_auc(h, m) == pytest.approx(0.375, abs=1e-12)
    assert pro_auc(h, m, max_fpr=1.0) == pytest.approx(0.8, abs=1e-12)
    assert pixel_auroc(h, m) == pytest.approx(0.8, abs=1e-12)  # one region: PRO curve = ROC curve


def test_pro_fpr_cap():
    # A fifth of the negatives score above every region pixel: PRO is 0 up to FPR 0.2, then 1.
    m = torch.zeros(1, 10, 10, dtype=torch.bool)
    m[0, 0, :5] = True                         # one region of 5 pixels, 95 negatives ...
    h = torch.rand(1, 10, 10) * 0.5
    h[m] = 1.0 + torch.rand(5)
    m = torch.cat([m, torch.zeros(1, 10, 10, dtype=torch.bool)])  # ... and a good image: 195
    h = torch.cat([h, torch.rand(1, 10, 10) * 0.5])
    neg = torch.nonzero(~m.flatten()).flatten()
    hot = neg[torch.randperm(len(neg))[:39]]   # 39 / 195 = 0.2
    h.view(-1)[hot] = 3.0 + torch.rand(39)
    assert pro_auc(h, m) == pytest.approx(0.1 / 0.3, abs=1e-12)
    assert pro_auc(h, m, max_fpr=0.15) == pytest.approx(0.0, abs=1e-12)
    assert pro_auc(h, m, max_fpr=1.0) == pytest.approx(0.8, abs=1e-12)


def test_pro_matches_definition_on_random_maps():
    rng = np.random.default_rng()
    for _ in range(5):
        m = rng.random((3, 12, 11)) < 0.15
        m[rng.integers(3)] = False                     # a good image among them
        h = rng.integers(0, 25, size=m.shape) / 24.0   # coarse values: many ties
        for max_fpr in (0.3, 0.05, 1.0):
            got = pro_auc(torch.from_numpy(h).float(), torch.from_numpy(m), max_fpr=max_fpr)
            assert got == pytest.approx(_brute_pro_auc(h.astype(np.float32), m, max_fpr), abs=1e-9)


def test_pro_with_one_region_equals_pixel_auroc_over_full_range():
    m = torch.zeros(2, 20, 20, dtype=torch.bool)
    m[1, 5:12, 3:9] = True
    h = torch.randint(0, 30, m.shape).float() + m * 4.0
    assert pro_auc(h, m, max_fpr=1.0) == pytest.approx(auroc(h.numpy(), m.numpy()), abs=1e-12)


def test_pro_random_map_is_about_fifteen_percent():
    m = torch.zeros(4, 64, 64, dtype=torch.bool)
    m[0, 10:40, 10:40] = True
    m[1, 30:45, 2:62] = True
    m[2, 20:50, 30:60] = True
    m[2, 0:15, 0:60] = True
    # Four regions of 900 pixels: the score's standard deviation is about 0.005.
    assert pro_auc(torch.rand(m.shape), m) == pytest.approx(0.15, abs=0.025)


def test_pro_resizes_heatmaps_like_pixel_auroc():
    m = torch.zeros(2, 16, 16, dtype=torch.bool)
    m[0, 4:8, 4:8] = True
    m[1, 10:14, 2:6] = True
    low = torch.rand(2, 8, 8)
    up = torch.nn.functional.interpolate(low[:, None], size=(16, 16), mode="bilinear",
                                         align_corners=False)[:, 0]
    assert pro_auc(low, m) == pro_auc(up, m)
    assert not math.isnan(pro_auc(low, m))
    # A low-resolution map that is perfect on the 2x2 blocks stays perfect when upsampled.
    perfect = m.view(2, 8, 2, 8, 2).any(4).any(2).float()
    assert pro_auc(perfect, m) == pytest.approx(1.0, abs=1e-12)


def test_pro_nan_without_defects_and_bad_input():
    m = torch.zeros(2, 8, 8, dtype=torch.bool)
    h = torch.rand(2, 8, 8)
    assert math.isnan(pro_auc(h, m))
    assert math.isnan(pro_auc(h, torch.ones(2, 8, 8, dtype=torch.bool)))  # no negative pixel
    m[0, 2, 2] = True
    with pytest.raises(ValueError, match="max_fpr"):
        pro_auc(h, m, max_fpr=0.0)
    with pytest.raises(ValueError, match="same N"):
        pro_auc(h[:1], m)
    h[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        pro_auc(h, m)
