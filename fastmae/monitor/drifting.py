"""`fastmae drift` as a library call: compare the embeddings of a folder of new images with
the reference's (MMD test, Frechet distance, novelty quantiles) and optionally write a report."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from ..files import atomic_write_json, atomic_write_text
from ..settings import DataError
from . import report as R
from .drift import frechet_distance, mmd_test, pca_2d, quantiles
from .images import load_folder
from .load import load_model
from .novelty import NearestNeighbours
from .reference import Reference
from .scorer import Scorer, model_signature

MAX_REFERENCE = 1000  # embeddings beyond this are subsampled (seeded) for the permutation test


def leave_one_out_novelty(bank: torch.Tensor, k: int) -> torch.Tensor:
    """Each bank row's mean distance to its k nearest other rows."""
    d = torch.cdist(bank.double(), bank.double())
    d.fill_diagonal_(float("inf"))
    return d.topk(min(k, bank.shape[0] - 1), dim=1, largest=False).values.mean(1).float()


def reference_embeddings(scorer: Scorer, source):
    """(embeddings (N, D), skipped files) of a reference file or folder."""
    path = Path(source).expanduser()
    if path.is_file():
        ref = Reference.load(path)
        ref.check_model(model_signature(scorer.model))
        return ref.embeddings, []
    if path.is_dir():
        data = load_folder(path, scorer.model.img_size, scorer.model.in_chans, what="--reference")
        if len(data.paths) < 20:
            raise DataError(f"--reference {path} has {len(data.paths)} readable image(s); a drift "
                            "test needs at least 20 reference images")
        return scorer.embed(data.images), data.skipped
    raise DataError(f"--reference {path} is neither a folder of good images nor a reference file")


def drift_test(ref_emb: torch.Tensor, new_emb: torch.Tensor, *, alpha: float = 0.01,
               permutations: int = 1000, seed: int = 0, knn: int = 3) -> dict:
    """The drift verdict and statistics of two embedding sets."""
    if not 0.0 < alpha < 1.0:
        raise DataError(f"--alpha must be in (0, 1), got {alpha}")
    if ref_emb.shape[0] > MAX_REFERENCE:
        g = torch.Generator().manual_seed(int(seed))
        ref_emb = ref_emb[torch.randperm(ref_emb.shape[0], generator=g)[:MAX_REFERENCE]]
    mmd = mmd_test(ref_emb, new_emb, permutations, seed)
    ref_nov = leave_one_out_novelty(ref_emb, knn)
    new_nov = NearestNeighbours(ref_emb).distances(new_emb, k=knn)
    return {"drift": mmd.p_value < alpha, "p_value": mmd.p_value, "alpha": alpha,
            "mmd2": mmd.mmd2, "bandwidth": mmd.bandwidth, "permutations": mmd.permutations,
            "seed": seed, "frechet_distance": frechet_distance(ref_emb, new_emb),
            "novelty": {"reference": quantiles(ref_nov), "new": quantiles(new_nov)},
            "n_reference": int(ref_emb.shape[0]), "n_new": int(new_emb.shape[0]),
            "_novelty_values": (ref_nov, new_nov)}


def drift_folder(checkpoint, reference, data, *, json_out=None, report=None, alpha=0.01,
                 permutations=1000, seed=0, device="auto", precision=None, batch_size=32,
                 kernels="auto", compile="auto", log=print) -> dict:
    model = load_model(checkpoint, kernels)
    scorer = Scorer(model, device=device, precision=precision, batch_size=batch_size, seed=seed, compile=compile)
    ref_emb, skipped = reference_embeddings(scorer, reference)
    new = load_folder(data, model.img_size, model.in_chans)
    t0 = time.perf_counter()
    new_emb = scorer.embed(new.images)
    ips = len(new.paths) / max(time.perf_counter() - t0, 1e-9)
    result = drift_test(ref_emb, new_emb, alpha=alpha, permutations=permutations, seed=seed)
    ref_nov, new_nov = result.pop("_novelty_values")
    result.update({"images_per_s": ips, "device": str(scorer.device), "compiled": scorer.compiled,
                   "skipped": [{"path": p, "reason": r} for p, r in skipped + new.skipped]})
    if json_out:
        atomic_write_json(result, Path(json_out).expanduser())
    if report:
        a, b = pca_2d(ref_emb, new_emb)
        sections = [R.table([{"verdict": "DRIFT" if result["drift"] else "no drift",
                              "p-value": result["p_value"], "alpha": alpha, "MMD^2": result["mmd2"],
                              "Frechet distance": result["frechet_distance"],
                              "reference images": result["n_reference"], "new images": result["n_new"]}]),
                    "<h2>Embeddings (PCA of the reference)</h2>" + R.scatter_svg({"reference": a, "new": b}),
                    "<h2>Novelty (kNN distance to the reference)</h2>" + R.histogram_svg(
                        {"reference (leave-one-out)": ref_nov.numpy(), "new": new_nov.numpy()},
                        xlabel="novelty")]
        if result["skipped"]:
            sections.append("<h2>Skipped files</h2>" + R.table(result["skipped"]))
        atomic_write_text(R.page("fastmae drift report", sections), Path(report).expanduser())
    log(f"fastmae drift: {'DRIFT' if result['drift'] else 'no drift'} (MMD p = {result['p_value']:.4g}, "
        f"alpha {alpha}; Frechet {result['frechet_distance']:.4g}; {result['n_new']} new vs "
        f"{result['n_reference']} reference images, {ips:.1f} images/s)")
    return result
