"""fastmae.monitor on tiny models: complementary masks, reconstruction error against a
per-pass reference, determinism, the reference file, drift statistics and metrics."""
import math

import numpy as np
import pytest
import torch

from fastmae.monitor import Reference, Scorer, complementary_masks
from fastmae.monitor.calibrate import threshold_at_fpr
from fastmae.monitor.drift import frechet_distance, mmd_test
from fastmae.monitor.masks import passes_for
from fastmae.monitor.metrics import auroc
from fastmae.monitor.recon import reconstruction_error, training_target
from fastmae.settings import CheckpointError, ConfigError, DataError

from .downstream_helpers import tiny_mae


def good_images(n, seed=0, size=16):
    """Smooth random blobs (a 'product') with noise, normalised-ish."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return (x - 0.5) * 2 + 0.1 * torch.randn(n, 3, size, size, generator=g)


@pytest.mark.parametrize("L,ratio,rounds", [(16, 0.75, 3), (64, 0.5, 2), (196, 0.75, 2)])
def test_complementary_masks_partition_each_round(L, ratio, rounds):
    m = complementary_masks(L, ratio, rounds, seed=int(torch.randint(0, 1000, ())))
    k = passes_for(ratio)
    assert m.passes == k and m.noise.shape == (rounds * k, L)
    vis = m.visible.view(rounds, k, L)
    assert torch.equal(vis.sum(1), torch.ones(rounds, L, dtype=torch.long))  # shown exactly once
    assert torch.equal(m.hidden.view(rounds, k, L).sum(1), torch.full((rounds, L), k - 1))
    if rounds > 1:
        assert not torch.equal(vis[0], vis[1])  # different partitions
    # The model's own masking keeps exactly the visible set.
    model = tiny_mae(img_size=4 * int(L**0.5))
    ids_keep, mask, _ = model.random_masking(rounds * k, m.mask_ratio, m.noise, "cpu")
    assert ids_keep.shape[1] == m.keep
    assert torch.equal(mask.bool(), m.hidden)


def test_complementary_masks_uneven_split_still_covers():
    m = complementary_masks(10, 0.75, 2, seed=3)  # k=4 does not divide 10: 3 shown per pass
    assert m.keep == 3
    assert (m.visible.view(2, 4, 10).sum(1) >= 1).all()
    assert (m.hidden.view(2, 4, 10).sum(1) >= 2).all()
    assert (m.visible.sum(1) == 3).all()


def test_complementary_masks_deterministic_and_bad_ratio():
    a, b = complementary_masks(16, 0.75, 2, seed=5), complementary_masks(16, 0.75, 2, seed=5)
    assert torch.equal(a.noise, b.noise)
    assert not torch.equal(a.noise, complementary_masks(16, 0.75, 2, seed=6).noise)
    with pytest.raises(ValueError, match="mask_ratio"):
        complementary_masks(16, 1.0)


@pytest.mark.parametrize("norm_pix", [False, True])
def test_reconstruction_error_matches_per_pass_reference(norm_pix):
    torch.manual_seed(0)
    model = tiny_mae(norm_pix_loss=norm_pix).eval()
    imgs = torch.randn(3, 3, 16, 16)
    m = complementary_masks(model.num_patches, 0.75, 2, seed=1)
    got = reconstruction_error(model, imgs, m, max_batch=8)  # forces several chunks
    # Reference: one image and one pass at a time, error of the hidden patches only.
    want = torch.zeros(3, model.num_patches, 48)
    count = torch.zeros(3, model.num_patches, 1)
    with torch.no_grad():
        for i in range(3):
            target = training_target(model, imgs[i:i + 1])[0]
            for p in range(m.noise.shape[0]):
                _, pred, mask = model(imgs[i:i + 1], m.mask_ratio, m.noise[p:p + 1])
                h = mask[0].bool()
                want[i, h] += (pred[0, h] - target[h]) ** 2
                count[i, h] += 1
    want = model.unpatchify(want / count).mean(1)
    assert got.shape == (3, 16, 16)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def _fitted(seed=0, **kw):
    torch.manual_seed(0)
    model = tiny_mae()
    scorer = Scorer(model, device="cpu", seed=seed, rounds=2, **kw)
    ref = scorer.fit(good_images(24, seed=1), fpr=0.05)
    return model, scorer, ref


def test_scores_are_deterministic_given_the_seed():
    imgs = good_images(5, seed=7)
    _, s1, _ = _fitted(seed=3)
    _, s2, _ = _fitted(seed=3)
    r1, r2 = s1.score(imgs), s2.score(imgs)
    assert torch.equal(r1.score, r2.score) and torch.equal(r1.heatmap, r2.heatmap)
    _, s3, _ = _fitted(seed=4)
    assert not torch.equal(s3.score(imgs).components["recon"], r1.components["recon"])
    assert r1.heatmap.shape == (5, 16, 16) and set(r1.components) == {"recon", "patch_novelty", "novelty"}


def test_anomalous_images_score_higher():
    _, scorer, _ = _fitted()
    good = good_images(6, seed=9)
    bad = good.clone()
    bad[:, :, 4:10, 4:10] = 4.0  # a bright square the reference never shows
    sg, sb = scorer.score(good), scorer.score(bad)
    assert sb.score.min() > sg.score.max()
    assert sb.verdict.all()
    inside = sb.heatmap[:, 4:10, 4:10].mean()
    outside = sb.heatmap[:, 12:, 12:].mean()
    assert inside > outside


def test_reference_file_round_trip(tmp_path):
    model, scorer, ref = _fitted()
    path = ref.save(tmp_path / "ref.safetensors")
    back = Reference.load(path)
    for name in ("image_bank", "patch_bank", "patch_bank_error", "embeddings", "calib_scores", "comp_loc",
                 "map_scale"):
        assert torch.equal(getattr(back, name), getattr(ref, name).float())
    assert back.threshold == ref.threshold and back.meta == ref.meta
    imgs = good_images(4, seed=11)
    again = Scorer(model, reference=path, device="cpu")
    assert torch.equal(again.score(imgs).score, scorer.score(imgs).score)
    other = tiny_mae()  # different weights: refused
    with pytest.raises(CheckpointError, match="different model"):
        Scorer(other, reference=path, device="cpu")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(CheckpointError):
        Reference.load(tmp_path / "junk.safetensors")
    with pytest.raises(DataError, match="safetensors"):
        ref.save(tmp_path / "ref.pt")


def test_small_reference_is_a_clear_error():
    scorer = Scorer(tiny_mae(), device="cpu")
    with pytest.raises(DataError, match=r"has 12 readable image\(s\).*at least 20.*8 more"):
        scorer.fit(good_images(12))


def test_threshold_quantile():
    s = torch.arange(1, 200).float()[torch.randperm(199)]  # 199 held-out scores 1..199
    assert threshold_at_fpr(s, 0.1) == 180.0  # the 20th largest: exceeded with probability 20/200
    # further out, the top k = 20 are fitted: above u = 179 the excesses 1..20 have mean 10.5
    assert threshold_at_fpr(s, 0.01) == pytest.approx(179 + 10.5 * math.log(20 / (199 * 0.01)))
    assert threshold_at_fpr(s[:30], 0.5) == float(s[:30].sort().values[30 - 15])
    with pytest.raises(DataError):
        threshold_at_fpr(s, 0.0)


def test_threshold_tail_fit_hits_the_fpr_with_less_spread_than_an_order_statistic():
    """Scores like the scorer's (a maximum over a heatmap's pixels): the fitted threshold's
    real false-positive rate centres on the target, and swings less between reference sets
    than the 4th largest of 400 (the plain 99% quantile) does."""
    g = torch.Generator().manual_seed(0)

    def draw(n):
        return torch.randn(n, 64, generator=g).amax(1)
    truth = draw(400_000).sort().values

    def real_fpr(t):
        return 1 - torch.searchsorted(truth, torch.tensor(t)).item() / truth.numel()
    fitted, order = [], []
    for _ in range(300):
        s = draw(400)
        fitted.append(real_fpr(threshold_at_fpr(s, 0.01)))
        order.append(real_fpr(float(s.sort().values[400 - 4])))
    fitted, order = torch.tensor(fitted), torch.tensor(order)
    assert 0.008 < fitted.mean() < 0.012  # measured 0.0105

    def in_band(f):  # within 2x of the target, the monitoring issue's bar
        return ((f >= 0.005) & (f <= 0.02)).float().mean()
    assert fitted.std() < 0.85 * order.std()  # measured 0.0041 vs 0.0053
    assert in_band(fitted) > in_band(order) + 0.05  # measured 0.91 vs 0.81


def test_mmd_test_same_vs_shifted():
    # Under no drift the p-value is uniform: a fixed draw keeps this test from failing 1% of runs.
    g = torch.Generator().manual_seed(123)
    x, y = torch.randn(60, 8, generator=g), torch.randn(40, 8, generator=g)
    shifted = y + 0.8
    same = mmd_test(x, y, permutations=200, seed=0)
    moved = mmd_test(x, shifted, permutations=200, seed=0)
    assert same.p_value > 0.05
    assert moved.p_value == pytest.approx(1 / 201)  # no permutation reaches the observed MMD
    assert moved.mmd2 > 10 * abs(same.mmd2)
    assert mmd_test(x, y, permutations=200, seed=0).p_value == same.p_value  # seeded
    assert frechet_distance(x, shifted) > frechet_distance(x, y)
    with pytest.raises(DataError, match="at least"):
        mmd_test(x, y[:3])


def test_mmd_statistic_matches_brute_force():
    x, y = torch.randn(23, 5), torch.randn(17, 5) + 0.2
    r = mmd_test(x, y, permutations=99, seed=1)
    s2 = 2 * r.bandwidth**2
    k = lambda a, b: torch.exp(-torch.cdist(a.double(), b.double()).pow(2) / s2)  # noqa: E731
    kxx, kyy = k(x, x), k(y, y)
    want = (kxx.sum() - kxx.trace()) / (23 * 22) + (kyy.sum() - kyy.trace()) / (17 * 16) - 2 * k(x, y).mean()
    assert r.mmd2 == pytest.approx(float(want), rel=1e-9, abs=1e-12)
    z = torch.cat([x, y])
    assert r.bandwidth == pytest.approx(float(torch.pdist(z.double()).median()), rel=1e-9)
    assert 1 / 100 <= r.p_value <= 1.0


def test_frechet_of_gaussians_matches_closed_form():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(20000, 2, generator=g)
    y = torch.randn(20000, 2, generator=g) * 2 + torch.tensor([1.0, 0.0])
    # mu diff^2 = 1; Tr(I + 4I - 2*2I) = 2  -> 3
    assert frechet_distance(x, y) == pytest.approx(3.0, abs=0.1)


def test_auroc_matches_pair_count():
    rng = np.random.default_rng()
    s = rng.integers(0, 5, 40).astype(float)  # many ties
    y = rng.random(40) < 0.4
    pairs = [(a > b) + 0.5 * (a == b) for a in s[y] for b in s[~y]]
    assert auroc(s, y) == pytest.approx(np.mean(pairs))
    assert np.isnan(auroc(s, np.zeros(40)))


def test_stream_after_all_blocks_then_norm_is_forward_features():
    from fastmae.models.vit import stream_after
    torch.manual_seed(0)
    model = tiny_mae().eval()
    imgs = torch.randn(2, 3, 16, 16)
    ids = torch.arange(model.num_patches).expand(2, -1)
    with torch.no_grad():
        x = model.embed_patches(imgs, ids)
        full = model.norm(stream_after(model.blocks, x, len(model.blocks), model.kernels))
        want = model.forward_features(imgs)
        first = stream_after(model.blocks, x, 1, model.kernels)
        ref_first = model.blocks[0](x)
    torch.testing.assert_close(full, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(first, ref_first, rtol=1e-5, atol=1e-5)


def test_feature_layer_and_cross_fitted_calibration(tmp_path):
    from fastmae.settings import ConfigError
    model, scorer, ref = _fitted(feature_layer=1)
    assert ref.meta["feature_layer"] == 1
    assert ref.calib_scores.numel() == 24 and ref.meta["n_calibration"] == 24  # every image calibrates
    imgs = good_images(4, seed=11)
    again = Scorer(model, reference=ref.save(tmp_path / "r.safetensors"), device="cpu")
    assert again.feature_layer == 1
    assert torch.equal(again.score(imgs).score, scorer.score(imgs).score)
    final = Scorer(model, device="cpu", rounds=2).fit(good_images(24, seed=1), fpr=0.05)
    assert not torch.equal(final.patch_bank, ref.patch_bank)  # a different layer's features
    with pytest.raises(ConfigError, match="feature layer"):
        Scorer(model, device="cpu", feature_layer=len(model.blocks) + 1)


def test_local_contrast_is_each_patch_minus_its_neighbours_mean():
    from fastmae.monitor.novelty import local_contrast
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 6 * 5, 3, generator=g)
    got = local_contrast(tokens, (6, 5), radius=1)
    grid = tokens.view(2, 6, 5, 3)
    for b, i, j in [(0, 0, 0), (1, 2, 3), (0, 5, 4), (1, 3, 0)]:
        nb = [grid[b, min(max(i + di, 0), 5), min(max(j + dj, 0), 4)]
              for di in (-1, 0, 1) for dj in (-1, 0, 1) if (di, dj) != (0, 0)]  # border repeats outward
        torch.testing.assert_close(got[b, i * 5 + j], grid[b, i, j] - torch.stack(nb).mean(0))
    # What a whole picture shares (a constant offset) is gone; a local bump is not.
    shifted = local_contrast(tokens + 5.0, (6, 5), radius=1)
    torch.testing.assert_close(shifted, got, atol=1e-5, rtol=0)


def test_recon_smooth_compares_low_passed_averaged_reconstruction():
    from fastmae.monitor.recon import gaussian_blur
    torch.manual_seed(0)
    model = tiny_mae().eval()
    imgs = torch.randn(2, 3, 16, 16)
    m = complementary_masks(model.num_patches, 0.75, 2, seed=1)
    got = reconstruction_error(model, imgs, m, smooth=1.5, max_batch=8)
    with torch.no_grad():  # reference: one pass at a time, predictions of hidden patches averaged
        pred_sum = torch.zeros(2, model.num_patches, 48)
        count = torch.zeros(2, model.num_patches, 1)
        for p in range(m.noise.shape[0]):
            _, pred, mask = model(imgs, m.mask_ratio, m.noise[p:p + 1].expand(2, -1))
            pred_sum += pred * mask[..., None]
            count += mask[..., None]
        recon = model.unpatchify(pred_sum / count)
    target = model.unpatchify(training_target(model, imgs))
    want = (gaussian_blur(recon, 1.5) - gaussian_blur(target, 1.5)).pow(2).mean(1)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    # Low-passing removes what the model cannot place: a fine checkerboard added to the image
    # raises the raw error far more than the smoothed one.
    checker = ((torch.arange(16)[:, None] + torch.arange(16)[None]) % 2 * 2 - 1).float()
    raw0, raw1 = (reconstruction_error(model, x, m) for x in (imgs, imgs + checker))
    sm0, sm1 = (reconstruction_error(model, x, m, smooth=1.5) for x in (imgs, imgs + checker))
    assert (raw1 - raw0).mean() > 10 * (sm1 - sm0).abs().mean()


def test_scorer_settings_round_trip_through_the_reference_file(tmp_path):
    _, scorer, ref = _fitted(feature_layer=1, feature_center="local", recon_smooth=1.0, sigma=1.0)
    ref.save(tmp_path / "ref.safetensors")
    fresh = Scorer(scorer.model, reference=tmp_path / "ref.safetensors", device="cpu")
    assert (fresh.feature_center, fresh.recon_smooth, fresh.sigma, fresh.feature_layer) == ("local", 1.0, 1.0, 1)
    imgs = good_images(4, seed=11)
    assert torch.equal(fresh.score(imgs).score, scorer.score(imgs).score)
    with pytest.raises(Exception, match="centring"):
        Scorer(scorer.model, device="cpu", feature_center="ring")


def test_calibration_leaves_each_reference_image_out():
    """Each reference image's calibration score uses its nearest neighbours among the OTHER
    images: the same as scoring it against banks built without it."""
    from fastmae.monitor.scorer import _search_others
    from fastmae.monitor.novelty import NearestNeighbours
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(6, 4, 5, generator=g)                   # 6 images x 4 patches
    nn = NearestNeighbours(feats.reshape(-1, 5))
    owner = torch.arange(6).repeat_interleave(4)
    dist, idx = _search_others(nn, feats.reshape(-1, 5), 2, owner, owner)
    for i in range(6):
        others = torch.cat([feats[j] for j in range(6) if j != i])
        want = torch.cdist(feats[i], others).topk(2, largest=False).values
        torch.testing.assert_close(dist[i * 4:(i + 1) * 4], want)
    assert (owner[idx] != owner[:, None]).all()
    _, scorer, ref = _fitted()
    assert ref.meta["calibration"] == "leave one image out" and ref.patch_bank.shape[0] == 24 * scorer.model.num_patches


def test_robust_scale_of_more_values_than_quantile_takes():
    from fastmae.monitor.calibrate import robust_scale
    x = torch.rand(2**24 + 3, generator=torch.Generator().manual_seed(0))  # torch.quantile refuses this many
    loc, scale = robust_scale(x)
    assert abs(float(loc) - 0.5) < 1e-3 and abs(float(scale) - 0.5 / 1.349) < 1e-3


def test_compile_on_runs_every_block_compiled_with_eagers_scores(monkeypatch):
    # dynamo with its eager backend: the tracing, guards and recompiles of the real thing
    # without the code generation (the slow test below runs inductor)
    real, wrapped = torch.compile, []

    def compile_eager(fn, **kw):
        wrapped.append(fn)
        return real(fn, backend="eager", **kw)

    monkeypatch.setattr(torch, "compile", compile_eager)
    torch._dynamo.reset()
    assert not Scorer(tiny_mae(), device="cpu").compiled  # auto: eager on the CPU
    with pytest.raises(ConfigError, match="compile"):
        Scorer(tiny_mae(), device="cpu", compile="sometimes")
    torch.manual_seed(0)
    eager = Scorer(tiny_mae(), device="cpu", compile="off")
    torch.manual_seed(0)
    model = tiny_mae()
    compiled = Scorer(model, device="cpu", compile="on")
    blocks = len(model.blocks) + len(model.decoder_blocks)
    assert compiled.compiled and len(wrapped) == blocks
    Scorer(model, device="cpu", compile="on")
    assert len(wrapped) == blocks  # a model compiled once is not wrapped again
    ref, imgs = good_images(24, seed=1), good_images(5, seed=7)
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):  # never silently eager
        compiled.fit(ref, fpr=0.05)
        got = compiled.score(imgs)
    eager.fit(ref, fpr=0.05)
    want = eager.score(imgs)
    torch.testing.assert_close(got.score, want.score, rtol=0, atol=1e-4)
    torch.testing.assert_close(got.heatmap, want.heatmap, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_compile_on_with_inductor_scores_as_eager():
    torch.manual_seed(0)
    eager = Scorer(tiny_mae(), device="cpu", compile="off")
    torch.manual_seed(0)
    compiled = Scorer(tiny_mae(), device="cpu", compile="on")
    ref, imgs = good_images(24, seed=1), good_images(5, seed=7)
    eager.fit(ref, fpr=0.05)
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        compiled.fit(ref, fpr=0.05)
        got = compiled.score(imgs)
    want = eager.score(imgs)
    torch.testing.assert_close(got.score, want.score, rtol=0, atol=1e-4)  # measured: 5e-6
    torch.testing.assert_close(got.heatmap, want.heatmap, rtol=0, atol=1e-4)
