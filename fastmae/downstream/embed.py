"""Features of a folder (or file list) of images, in file order, written with the file
names: .safetensors (names in the metadata) or .npy (names in a sidecar .txt). For search,
deduplication, clustering or drift monitoring."""
import json
from pathlib import Path

import numpy as np
import torch

from .. import data
from ..files import atomic_save_file, atomic_write_text, check_new
from ..settings import ConfigError, resolve_device, resolve_precision
from .features import extract, frozen_encoder
from .images import ordered_batches

FORMATS = (".safetensors", ".npy")


def sidecar(out: Path) -> Path:
    return out.with_suffix(".txt")


def embed(source, checkpoint, out, *, pool: str = "cls", img_size=None, batch_size: int = 64,
          num_workers: int = 0, device="cpu", precision: str | None = None, attn: str = "auto",
          force: bool = False) -> dict:
    """Write the features of every image under `source`. Returns a summary dict.
    `device` and `precision` take what --device and --precision do."""
    out = Path(out).expanduser()
    if out.suffix not in FORMATS:
        raise ConfigError(f"--out must end in {' or '.join(FORMATS)}, got {out.name}")
    if pool not in ("cls", "avg"):
        raise ConfigError(f"unknown pooling {pool!r}; choose cls or avg")
    check_new(out, force, "output")
    if out.suffix == ".npy":
        check_new(sidecar(out), force, "file-name list")
    samples = data.scan(source)
    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    encoder = frozen_encoder(checkpoint, img_size, attn)
    encoder.to(device)
    batches = ordered_batches(samples.paths, encoder.img_size[0], encoder.config["in_chans"],
                              batch_size, num_workers)
    feats, _ = extract(encoder, batches, pool, device, precision)
    names = [str(p) for p in samples.paths]
    meta = {"pool": pool, "checkpoint": str(checkpoint), "dim": str(feats.shape[1]),
            "img_size": str(encoder.img_size[0])}
    if out.suffix == ".safetensors":
        from safetensors.torch import save_file
        meta["paths"] = json.dumps(names)
        atomic_save_file(lambda tmp: save_file({"features": feats.contiguous()}, str(tmp), metadata=meta), out)
    else:
        def write_npy(tmp):
            with open(tmp, "wb") as f:
                np.save(f, feats.numpy())
        atomic_save_file(write_npy, out)
        atomic_write_text("".join(n + "\n" for n in names), sidecar(out))
    return {"out": str(out), "count": len(names), "dim": int(feats.shape[1]), "pool": pool,
            "names": str(sidecar(out)) if out.suffix == ".npy" else "safetensors metadata 'paths'"}


def read_embeddings(path) -> tuple[torch.Tensor, list[str]]:
    """(features, file names) of a file written by embed()."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor("features"), json.loads(f.metadata()["paths"])
    feats = torch.from_numpy(np.load(path, allow_pickle=False))
    return feats, sidecar(path).read_text(encoding="utf-8").splitlines()
