"""Scorer: per-image anomaly scores and per-pixel heatmaps from a pretrained MAE and a
reference set of good images.

Three components, each a question the model can answer about an image:
- recon: the MAE cannot reconstruct what it never saw (complementary masks). Some normal
  content is hard to predict anyway (sensor grain, edges), so each pixel's error is divided by
  the error the model made on the most similar reference patches (nearest in feature space):
  the score is the max of that smoothed ratio;
- patch_novelty: some patch's features lie far from every reference patch's (max over patches);
  the features are the final tokens or, with feature_layer=N, the stream after N blocks;
- novelty: the image's mean-pooled features lie far from the reference images' (kNN).
Each is z-scored on held-out reference images and the z-scores are averaged."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models.compiled import compile_enabled, compile_model
from ..settings import ConfigError, autocast, resolve_device, resolve_precision
from .calibrate import check_reference_count, combine, robust_scale, threshold_at_fpr
from .masks import complementary_masks
from .novelty import CENTERING, NearestNeighbours, encoder_features, subsample
from .recon import gaussian_blur, reconstruction_error
from .reference import Reference

COMPONENTS = ("recon", "patch_novelty", "novelty")


@dataclass
class ScoreResult:
    score: torch.Tensor                  # (B,) combined score
    heatmap: torch.Tensor                # (B, H, W) combined per-pixel map (z units)
    components: dict                     # name -> (B,) raw component score
    verdict: torch.Tensor                # (B,) bool: score above the calibrated threshold


def model_signature(model) -> dict:
    """What a reference file must agree with: the architecture and a checksum of the weights."""
    with torch.no_grad():
        checksum = sum(float(p.double().abs().sum()) for p in model.parameters())
    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.config.items()}
    return {**cfg, "weights_abs_sum": round(checksum, 3)}


class Scorer:
    """Scorer(model, reference=Reference | path.safetensors | None).score(images) -> ScoreResult.
    Without a reference, call fit(images) first (or fastmae.monitor.fit_reference).
    compile: torch.compile of the model's transformer blocks, in place (auto: on CUDA only)."""

    def __init__(self, model, reference=None, *, rounds: int = 2, mask_ratio: float = 0.75,
                 seed: int = 0, device="auto", precision: str | None = None, batch_size: int = 32,
                 bank_size: int = 50000, knn: int = 3, components=COMPONENTS, sigma: float | None = None,
                 feature_layer: int | None = None, recon_smooth: float = 0.0, feature_center: str = "image",
                 compile: str = "auto"):
        bad = [c for c in components if c not in COMPONENTS]
        if bad or not components:
            raise ConfigError(f"unknown score component(s) {bad}; choose from {', '.join(COMPONENTS)}")
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        # Every path (features, complementary-mask passes, intermediate layers) runs the blocks'
        # forward_split, so compiling the blocks, in place, compiles them all.
        self.compiled = compile_enabled(compile, self.device)
        if self.compiled:
            compile_model(self.model, mode="blocks", dynamic=True)
        self.rounds, self.mask_ratio, self.seed = int(rounds), float(mask_ratio), int(seed)
        self.batch_size, self.bank_size, self.knn = int(batch_size), int(bank_size), int(knn)
        self.components = list(components)
        self.sigma = float(model.patch_size) / 2 if sigma is None else float(sigma)
        depth = len(model.blocks)
        if feature_layer is not None and not 1 <= int(feature_layer) <= depth:
            raise ConfigError(f"feature layer must be in 1..{depth} (the encoder's blocks), got {feature_layer}")
        self.feature_layer = None if feature_layer is None else int(feature_layer)
        if recon_smooth < 0:
            raise ConfigError(f"recon smoothing must be >= 0 pixels, got {recon_smooth}")
        self.recon_smooth = float(recon_smooth)
        if feature_center not in CENTERING:
            raise ConfigError(f"unknown feature centring {feature_center!r}; choose from {', '.join(CENTERING)}")
        self.feature_center = feature_center
        self.masks = complementary_masks(model.num_patches, self.mask_ratio, self.rounds, self.seed)
        self.reference = None
        if reference is not None:
            self.set_reference(reference if isinstance(reference, Reference) else Reference.load(reference))

    # -- the settings a reference file fixes -------------------------------------------

    def settings(self) -> dict:
        return {"components": self.components, "rounds": self.rounds, "mask_ratio": self.mask_ratio,
                "seed": self.seed, "bank_size": self.bank_size, "knn": self.knn, "sigma": self.sigma,
                "feature_layer": self.feature_layer, "recon_smooth": self.recon_smooth,
                "feature_center": self.feature_center, "model": model_signature(self.model)}

    def set_reference(self, ref: Reference) -> None:
        ref.check_model(model_signature(self.model))
        m = ref.meta
        self.components = list(m["components"])
        self.rounds, self.mask_ratio, self.seed = int(m["rounds"]), float(m["mask_ratio"]), int(m["seed"])
        self.knn, self.sigma, self.bank_size = int(m["knn"]), float(m["sigma"]), int(m["bank_size"])
        self.feature_layer = m.get("feature_layer")  # absent in older files: the final tokens
        self.recon_smooth = float(m.get("recon_smooth", 0.0))  # absent in older files: raw error
        self.feature_center = m.get("feature_center", "image")
        self.masks = complementary_masks(self.model.num_patches, self.mask_ratio, self.rounds, self.seed)
        self.reference = ref
        self._image_nn = NearestNeighbours(ref.image_bank)
        self._patch_nn = NearestNeighbours(ref.patch_bank)
        self._bank_error = ref.patch_bank_error

    # -- raw quantities ------------------------------------------------------------------

    @torch.no_grad()
    def features(self, imgs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image features (N, D), patch features (N, L, Dp)) on the CPU."""
        outs_i, outs_p = [], []
        for start in range(0, imgs.shape[0], self.batch_size):
            x = imgs[start:start + self.batch_size].to(self.device)
            with autocast(self.device, self.precision):
                fi, fp = encoder_features(self.model, x, self.feature_layer, self.feature_center)
            outs_i.append(fi.float().cpu())
            outs_p.append(fp.float().cpu())
        return torch.cat(outs_i), torch.cat(outs_p)

    @torch.no_grad()
    def recon_maps(self, imgs: torch.Tensor) -> torch.Tensor:
        """(N, H, W) per-pixel reconstruction error (not smoothed) on the CPU."""
        out = []
        per = max(1, self.batch_size // 2)
        for start in range(0, imgs.shape[0], per):
            x = imgs[start:start + per].to(self.device)
            with autocast(self.device, self.precision):
                m = reconstruction_error(self.model, x, self.masks, self.recon_smooth)
            out.append(m.float().cpu())
        return torch.cat(out)

    def _upsample(self, per_patch: torch.Tensor) -> torch.Tensor:
        """(N, L) -> (N, H, W) bilinear."""
        grid = per_patch.view(per_patch.shape[0], 1, *self.model.grid_size)
        return F.interpolate(grid, size=self.model.img_size, mode="bilinear", align_corners=False)[:, 0]

    def _raw(self, imgs, image_nn, patch_nn, bank_error, pre=None, owner=None):
        """Raw component scores (N, C) in self.components order and the two maps. `pre`:
        the images' (features, patch features, recon maps or None), already computed.
        `owner`: the reference images themselves, each scored leaving itself out: the source
        image index of every patch bank row (the image bank's row i is image i)."""
        if pre is None:
            pre = (*self.features(imgs), self.recon_maps(imgs) if "recon" in self.components else None)
        feats, patch_feats, rmaps = pre
        b, L, d = patch_feats.shape
        if owner is None:
            dist, idx = patch_nn.search(patch_feats.reshape(b * L, d), k=self.knn)
            image_dist = image_nn.distances(feats, k=self.knn)
        else:
            queries = torch.arange(b).repeat_interleave(L)
            dist, idx = _search_others(patch_nn, patch_feats.reshape(b * L, d), self.knn, queries, owner)
            image_dist = _search_others(image_nn, feats, self.knn, torch.arange(b), torch.arange(b))[0].mean(1)
        pmap = gaussian_blur(self._upsample(dist[:, 0].view(b, L)), self.sigma)
        recon = None
        if "recon" in self.components:
            expected = self._upsample(bank_error[idx].mean(1).view(b, L))
            floor = 0.1 * float(bank_error.median()) + 1e-8
            recon = gaussian_blur(rmaps / (expected + floor), self.sigma)
        values = {"recon": recon.flatten(1).amax(1) if recon is not None else None,
                  "patch_novelty": pmap.flatten(1).amax(1),
                  "novelty": image_dist}
        comps = torch.stack([values[c] for c in self.components], dim=1)
        return comps, recon, pmap, feats

    # -- reference -------------------------------------------------------------------------

    def _banks(self, feats, patch_feats, rmaps):
        """(image kNN, patch kNN, patch bank, per-bank-patch recon error, each bank row's
        source image) of the reference images' features."""
        sel = subsample(patch_feats.shape[0] * patch_feats.shape[1], self.bank_size, self.seed)
        bank = patch_feats.reshape(-1, patch_feats.shape[-1])[sel]
        if rmaps is not None:  # each bank patch's own error: what similar content costs
            bank_error = F.avg_pool2d(rmaps[:, None], self.model.patch_size).reshape(-1)[sel]
        else:
            bank_error = torch.zeros(len(sel))
        return NearestNeighbours(feats), NearestNeighbours(bank), bank, bank_error, sel // patch_feats.shape[1]

    @torch.no_grad()
    def fit(self, imgs: torch.Tensor, fpr: float = 0.01, meta: dict | None = None) -> Reference:
        """Build and use a Reference from good images (N, C, H, W). The banks that scoring
        uses hold every image. The threshold is calibrated leaving one image out: each
        reference image is scored against the banks without its own patches (its nearest
        neighbours from the other images), so every image gives a calibration score from a
        bank all but as large as the one new images meet."""
        check_reference_count(imgs.shape[0])
        feats, patch_feats = self.features(imgs)
        rmaps = self.recon_maps(imgs) if "recon" in self.components else None
        image_nn, patch_nn, bank, bank_error, owner = self._banks(feats, patch_feats, rmaps)
        comps, recon, pmap, _ = self._raw(None, image_nn, patch_nn, bank_error, pre=(feats, patch_feats, rmaps),
                                          owner=owner)
        recon = pmap if recon is None else recon
        loc, scale = robust_scale(comps)
        scores = combine(comps, loc, scale)
        map_loc = torch.stack([m.median() for m in (recon, pmap)])
        map_scale = torch.stack([robust_scale(m.flatten())[1] for m in (recon, pmap)])
        ref = Reference(feats.clone(), bank, bank_error, feats, comps, scores, loc, scale, map_loc, map_scale,
                        threshold_at_fpr(scores, fpr),
                        {**self.settings(), "fpr": fpr, "n_reference": int(imgs.shape[0]),
                         "n_calibration": int(scores.numel()), "calibration": "leave one image out",
                         **(meta or {})})
        self.set_reference(ref)
        return ref

    # -- scoring -------------------------------------------------------------------------

    @torch.no_grad()
    def score(self, imgs: torch.Tensor) -> ScoreResult:
        """Score normalised images (N, C, H, W) at the model's size."""
        if self.reference is None:
            raise ConfigError("the Scorer has no reference: pass reference= or call fit(good_images)")
        ref = self.reference
        comps, recon, pmap, _ = self._raw(imgs, self._image_nn, self._patch_nn, self._bank_error)
        score = combine(comps, ref.comp_loc, ref.comp_scale)
        z = [(pmap - ref.map_loc[1]) / ref.map_scale[1]]
        if recon is not None:
            z.append((recon - ref.map_loc[0]) / ref.map_scale[0])
        heatmap = torch.stack(z).mean(0)
        return ScoreResult(score, heatmap, {c: comps[:, i] for i, c in enumerate(self.components)},
                           score > ref.threshold)

    def embed(self, imgs: torch.Tensor) -> torch.Tensor:
        """Image features (N, D) as stored in Reference.embeddings (for drift)."""
        return self.features(imgs)[0]


def _search_others(nn: NearestNeighbours, query: torch.Tensor, k: int, query_owner: torch.Tensor,
                   bank_owner: torch.Tensor):
    """nn.search(query, k) among the bank rows of other images than each query's own."""
    extra = int(torch.bincount(bank_owner).max())
    dist, idx = nn.search(query, k=k + extra)
    dist = dist.masked_fill(bank_owner[idx] == query_owner[:, None], float("inf"))
    dist, order = dist.sort(dim=1)
    return dist[:, :k], idx.gather(1, order)[:, :k]
