"""`fastmae score` as a library call: score a folder against a reference and write
scores.csv, scores.json, heatmap PNGs and a self-contained report.html."""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import numpy as np
import torch

from ..files import atomic_save_file, atomic_write_json, atomic_write_text
from . import report as R
from .images import display_image, ground_truth_masks, load_folder
from .load import load_model, reference_for
from .metrics import auroc, pixel_auroc, pro_auc
from .scorer import Scorer


def _has_defect_classes(labels) -> bool:
    return labels is not None and "good" in labels and any(lab != "good" for lab in labels)


def evaluate(result, labels, masks) -> dict:
    """Image AUROC (good vs every other class, and per class), pixel AUROC when masks exist,
    and the false-positive rate on the good images at the calibrated threshold."""
    if not _has_defect_classes(labels):
        return {}
    y = np.array([lab != "good" for lab in labels])
    s = result.score.numpy()
    out = {"image_auroc": auroc(s, y), "n_good": int((~y).sum()), "n_defective": int(y.sum()),
           "fpr_good": float(result.verdict.numpy()[~y].mean()),
           "recall_defective": float(result.verdict.numpy()[y].mean()),
           "image_auroc_per_class": {}, "component_image_auroc": {}}
    for c in sorted(set(labels) - {"good"}):
        keep = np.array([lab in ("good", c) for lab in labels])
        out["image_auroc_per_class"][c] = auroc(s[keep], y[keep])
    for name, v in result.components.items():
        out["component_image_auroc"][name] = auroc(v.numpy(), y)
    if masks is not None:
        out["pixel_auroc"] = pixel_auroc(result.heatmap, masks)
        out["pro"] = pro_auc(result.heatmap, masks)  # per-region overlap up to 30% FPR
    return out


def score_folder(checkpoint, reference, data, out, *, save_reference=None, fpr=None, rounds=2,
                 mask_ratio=0.75, seed=0, device="auto", precision=None, batch_size=32,
                 top=16, components=None, kernels="auto", compile="auto", log=print,
                 feature_layer=None, bank_size=50000, recon_smooth=0.0, feature_center="image",
                 sigma=None) -> dict:
    out = Path(out).expanduser()
    model = load_model(checkpoint, kernels)
    kw = {} if components is None else {"components": components}
    scorer = Scorer(model, rounds=rounds, mask_ratio=mask_ratio, seed=seed, device=device,
                    precision=precision, batch_size=batch_size, feature_layer=feature_layer,
                    bank_size=bank_size, recon_smooth=recon_smooth, feature_center=feature_center,
                    sigma=sigma, compile=compile, **kw)
    t0 = time.perf_counter()
    ref, ref_skipped = reference_for(scorer, reference, fpr)
    t_ref = time.perf_counter() - t0
    if save_reference:
        ref.save(save_reference)
    new = load_folder(data, model.img_size, model.in_chans)
    t0 = time.perf_counter()
    result = scorer.score(new.images)
    seconds = time.perf_counter() - t0
    ips = len(new.paths) / seconds if seconds > 0 else float("inf")
    masks = ground_truth_masks(new, data, model.img_size)
    metrics = evaluate(result, new.labels, masks)

    out.mkdir(parents=True, exist_ok=True)
    order = torch.argsort(result.score, descending=True).tolist()
    pictures = set(order[:top]) | set(torch.nonzero(result.verdict).flatten().tolist())
    hi = float(torch.quantile(result.heatmap.flatten()[::7], 0.999))
    lo, hi = 0.0, max(hi, 1.0)
    rows, pic_names, cards = [], {}, []
    for rank, i in enumerate(order):
        if i in pictures:
            name = f"heatmaps/{rank:05d}.png"  # never the user's file name: it may be anything
            pic = R.heatmap_picture(display_image(new.images[i], model.in_chans),
                                    result.heatmap[i].numpy(), lo, hi)
            atomic_save_file(lambda tmp, pic=pic: pic.save(tmp, format="PNG"), out / name)
            pic_names[i] = name
            if rank < top or len(cards) < 64:
                cards.append(R.card(R.png_data_uri(pic), [new.paths[i], f"score {float(result.score[i]):.3f}"
                                    + ("  FLAGGED" if bool(result.verdict[i]) else "")],
                                    bool(result.verdict[i])))
    for i, path in enumerate(new.paths):
        row = {"path": path, "score": float(result.score[i]),
               **{k: float(v[i]) for k, v in result.components.items()},
               "verdict": "anomalous" if bool(result.verdict[i]) else "normal"}
        if new.labels is not None:
            row["label"] = new.labels[i]
        row["heatmap"] = pic_names.get(i, "")
        rows.append(row)

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(buf.getvalue(), out / "scores.csv")
    summary = {"n_images": len(new.paths), "n_flagged": int(result.verdict.sum()),
               "threshold": ref.threshold, "fpr": ref.meta.get("fpr"), "images_per_s": ips,
               "score_seconds": seconds, "reference_seconds": t_ref,
               "device": str(scorer.device), "precision": scorer.precision, "compiled": scorer.compiled,
               "settings": {k: v for k, v in ref.meta.items() if k != "model"},
               "metrics": metrics,
               "skipped": [{"path": p, "reason": r} for p, r in ref_skipped + new.skipped]}
    atomic_write_json({**summary, "images": rows}, out / "scores.json")

    sections = [R.table([{"images": len(new.paths), "flagged": summary["n_flagged"],
                          "threshold": ref.threshold, "fpr target": ref.meta.get("fpr"),
                          "images/s": ips, "device": summary["device"]}])]
    if metrics:
        sections.append("<h2>Against ground truth</h2>" + R.table([{
            "image AUROC": metrics["image_auroc"], "pixel AUROC": metrics.get("pixel_auroc", "n/a"),
            "PRO (FPR ≤ 0.3)": metrics.get("pro", "n/a"),
            "FPR on good": metrics["fpr_good"], "recall on defective": metrics["recall_defective"]}])
            + R.table([{"class": k, "image AUROC": v} for k, v in metrics["image_auroc_per_class"].items()]))
    sections.append("<h2>Scores: reference (held-out) vs new</h2>" + R.histogram_svg(
        {"reference (held-out good)": ref.calib_scores.numpy(), "new": result.score.numpy()},
        threshold=ref.threshold))
    sections.append(f"<h2>Most anomalous (top {top}) and flagged</h2>" + "".join(cards))
    if summary["skipped"]:
        sections.append("<h2>Skipped files</h2>" + R.table(summary["skipped"]))
    sections.append("<h2>All images</h2>" + R.table(
        [{k: v for k, v in r.items() if k != "heatmap"} for r in rows]))
    atomic_write_text(R.page("fastmae score report", sections), out / "report.html")
    log(f"fastmae score: {len(new.paths)} images, {summary['n_flagged']} flagged at threshold "
        f"{ref.threshold:.3f} (fpr {ref.meta.get('fpr')}), {ips:.1f} images/s on {scorer.device}"
        + (f"; image AUROC {metrics['image_auroc']:.4f}" if metrics else "")
        + (f", pixel AUROC {metrics['pixel_auroc']:.4f}" if "pixel_auroc" in metrics else "")
        + (f", PRO {metrics['pro']:.4f}" if "pro" in metrics else "")
        + (f"; skipped {len(summary['skipped'])} unreadable file(s)" if summary["skipped"] else ""))
    log(f"outputs: {out / 'scores.csv'}, {out / 'scores.json'}, {out / 'report.html'}")
    return summary
