"""Reference statistics: what scoring and drift need of the good images, in one safetensors
file (tensors + JSON metadata), so a production job never re-reads the reference folder."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..files import atomic_save_file
from ..settings import CheckpointError, DataError

FORMAT = "fastmae-reference-v1"
TENSORS = ("image_bank", "patch_bank", "patch_bank_error", "embeddings", "calib_components", "calib_scores",
           "comp_loc", "comp_scale", "map_loc", "map_scale")


@dataclass
class Reference:
    image_bank: torch.Tensor        # (N, D) image features of the reference images (novelty kNN)
    patch_bank: torch.Tensor        # (M, Dp) their patch features, subsampled to the bank size
    patch_bank_error: torch.Tensor  # (M,) reconstruction error of those patches
    embeddings: torch.Tensor        # (N, D) image features of every reference image (drift)
    calib_components: torch.Tensor  # (N, C) raw component scores, each image against the other folds' banks
    calib_scores: torch.Tensor      # (N,) their combined scores
    comp_loc: torch.Tensor          # (C,) robust location / scale of each component
    comp_scale: torch.Tensor
    map_loc: torch.Tensor           # (2,) location / scale of the recon and patch-novelty maps
    map_scale: torch.Tensor
    threshold: float
    meta: dict = field(default_factory=dict)  # components, fpr, rounds, mask_ratio, seed, model

    @property
    def components(self) -> list[str]:
        return list(self.meta["components"])

    def save(self, path) -> Path:
        from safetensors.torch import save_file
        path = Path(path).expanduser()
        if path.suffix != ".safetensors":
            raise DataError(f"--save-reference {path}: the reference file must end in .safetensors")
        tensors = {k: getattr(self, k).detach().float().cpu().contiguous() for k in TENSORS}
        meta = {"format": FORMAT, "threshold": repr(float(self.threshold)),
                "meta": json.dumps(self.meta, sort_keys=True)}
        return atomic_save_file(lambda tmp: save_file(tensors, str(tmp), metadata=meta), path)

    @classmethod
    def load(cls, path) -> "Reference":
        from safetensors import SafetensorError, safe_open
        path = Path(path).expanduser()
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("format") != FORMAT:
                    raise CheckpointError(f"{path} is not a fastmae reference file ({FORMAT})")
                missing = [k for k in TENSORS if k not in f.keys()]
                if missing:
                    raise CheckpointError(f"{path} lacks {', '.join(missing)}")
                tensors = {k: f.get_tensor(k) for k in TENSORS}
                return cls(**tensors, threshold=float(meta["threshold"]), meta=json.loads(meta["meta"]))
        except (OSError, ValueError, KeyError, SafetensorError) as e:
            raise CheckpointError(f"cannot read reference file {path}: {e}") from None

    def check_model(self, signature: dict) -> None:
        """The reference was computed with a model of the same architecture and weights."""
        mine = self.meta.get("model", {})
        if mine != signature:
            diff = sorted(k for k in set(mine) | set(signature) if mine.get(k) != signature.get(k))
            raise CheckpointError("the reference file was made with a different model "
                                  f"(differs in {', '.join(diff)}); recompute it with --save-reference")
