"""`fastmae demo --monitor`: the monitoring story on the built-in SYNTHETIC inspection dataset,
on a CPU, in minutes.

1. pretrain an MAE on train/good only (fastmae.train.pretrain, the `fastmae train` path);
2. calibrate on the good images and score test/ (score_folder, the `fastmae score` path):
   image AUROC, pixel AUROC and PRO against the ground truth, heatmaps, report.html;
3. test fresh good images, and the same images darkened, for drift against the saved
   reference (drift_folder, the `fastmae drift` path);
4. write report.md and monitor.json with this run's numbers and the command lines that
   repeat each step by hand."""
from __future__ import annotations

import json
import platform
import shlex
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from .. import __version__
from ..data import builtin_dataset
from ..data.inspection import VERSION, good_image
from ..files import atomic_write_json, atomic_write_text
from ..settings import ConfigError, TrainingError
from .drifting import drift_folder
from .scoring import score_folder

# The whole recipe in one place: pretraining, scoring and drift settings.
RECIPE = {
    "model": "mae_vit_micro_patch4",
    "model_overrides": {},                      # as registered: 4 px patches, 256 tokens at 64 px
    "img_size": 64,
    "epochs": 150,
    "batch_size": 64,
    "blr": 1.5e-3,
    "warmup_epochs": 5,
    "min_crop_scale": 0.8,                      # a fixed camera: crops stay close to the whole view
    "mask_ratio": 0.75,
    # scoring (fastmae score)
    "fpr": 0.01,
    "rounds": 2,
    "feature_layer": 4,
    "feature_center": "image",
    "components": ["recon", "patch_novelty"],
    "recon_smooth": 2.0,
    "sigma": 1.0,
    # drift (fastmae drift)
    "drift_images": 50,                         # fresh good images per drift test
    "darken": 0.6,                              # the shifted copy: brightness x0.6
    "alpha": 0.01,
    "permutations": 1000,
}
QUICK = {"epochs": 50}

# TrainConfig fields the recipe sets (and the `fastmae train` flags that spell them).
_TRAIN_KEYS = ("model", "img_size", "epochs", "batch_size", "blr", "warmup_epochs", "min_crop_scale",
               "mask_ratio")


def recipe(quick: bool = False, **overrides) -> dict:
    """RECIPE, with QUICK applied for --quick, then `overrides` (tests shrink it this way)."""
    unknown = sorted(set(overrides) - set(RECIPE))
    if unknown:
        raise ConfigError(f"unknown monitor demo setting(s): {', '.join(unknown)}")
    return {**RECIPE, **(QUICK if quick else {}), **overrides}


def _flags(values: dict) -> list[str]:
    out = []
    for k, v in values.items():
        out += [f"--{k.replace('_', '-')}", ",".join(v) if isinstance(v, list) else str(v)]
    return out


def _command(words: list[str]) -> str:
    return "fastmae " + shlex.join(words)


def _write_good(folder: Path, n: int, seed: int, factor: float = 1.0) -> Path:
    """n fresh good pictures (outside every split of the dataset), brightness scaled by factor."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = good_image(i, seed)
        if factor != 1.0:
            img = (img.astype(np.float64) * factor).clip(0, 255).astype(np.uint8)
        Image.fromarray(img, "RGB").save(folder / f"{i:04d}.png")
    return folder


def _pretrain(r: dict, data: Path, out: Path, *, seed, device, loader, kernels, num_workers, log):
    from ..train import TrainConfig, pretrain
    train = {k: r[k] for k in _TRAIN_KEYS}
    train["warmup_epochs"] = min(r["warmup_epochs"], r["epochs"] / 2)  # a short run still warms up
    overrides, words = dict(r["model_overrides"]), ["train"]
    if overrides:  # they have no flag: `fastmae train` reads them from a --config file
        config_file = out / "train.yaml"
        atomic_write_text(yaml.safe_dump({"model_overrides": overrides}), config_file)
        words += ["--config", str(config_file)]
    run = {"data": str(data), "output_dir": str(out / "pretrain"), "loader": loader, "kernels": kernels,
           "device": device, "seed": seed, "resume": "none"}
    command = _command(words + _flags({**train, **run}))
    cfg = TrainConfig(**train, **run, num_workers=num_workers, model_overrides=overrides)
    return pretrain(cfg, log=log), command


def run_monitor_demo(output_dir="./fastmae-monitor-demo", *, quick: bool = False, seed: int = 0,
                     device: str = "auto", loader: str = "auto", kernels: str = "auto",
                     num_workers: int | None = None, log=print, **overrides) -> dict:
    """The whole monitoring story; returns what monitor.json holds. `overrides` replace RECIPE
    entries (tests use them to shrink the run)."""
    r = recipe(quick, **overrides)
    out = Path(output_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    t0 = time.time()
    root = builtin_dataset("inspection")
    good, test = root / "train" / "good", root / "test"
    n_train = sum(1 for p in good.iterdir() if p.is_file())

    log(f"[1/4] pretraining {r['model']} on {n_train} good images only ({r['epochs']} epochs, "
        f"mask ratio {r['mask_ratio']}, crops of at least {r['min_crop_scale']:.0%} of the view)")
    pre, train_cmd = _pretrain(r, good, out, seed=seed, device=device, loader=loader, kernels=kernels,
                               num_workers=num_workers, log=log)
    if pre.checkpoint is None:
        raise TrainingError("pretraining stopped before writing a checkpoint")
    if pre.interrupted:  # stopped by a signal: the user wants the demo to end, not to go on
        raise TrainingError(f"pretraining was interrupted at step {pre.steps}; its checkpoint is {pre.checkpoint}")
    ckpt = Path(pre.checkpoint)
    t_pre = time.time() - t0

    log("[2/4] calibrating on the good images and scoring test/ (good parts and four defect kinds)")
    t1 = time.time()
    ref_file = out / "reference.safetensors"
    score_kw = {k: r[k] for k in ("fpr", "rounds", "mask_ratio", "components", "feature_layer",
                                  "feature_center", "recon_smooth", "sigma")}
    summary = score_folder(ckpt, good, test, out / "score", save_reference=ref_file, seed=seed,
                           device=device, kernels=kernels, log=log, **score_kw)
    score_cmd = _command(["score", "--checkpoint", str(ckpt), "--reference", str(good), "--data", str(test),
                          "--out", str(out / "score"), "--save-reference", str(ref_file)]
                         + _flags({**score_kw, "seed": seed, "device": device, "kernels": kernels}))
    t_score = time.time() - t1
    rows = _read_rows(out / "score" / "scores.json")

    log(f"[3/4] drift: {r['drift_images']} fresh good images, then the same images darkened "
        f"x{r['darken']}, against the saved reference")
    t2 = time.time()
    drift, drift_cmds = {}, {}
    for name, factor in (("fresh_good", 1.0), ("darkened", r["darken"])):
        folder = _write_good(out / "drift" / name, r["drift_images"], seed=seed, factor=factor)
        kw = {"alpha": r["alpha"], "permutations": r["permutations"], "seed": seed, "device": device,
              "kernels": kernels}
        res = drift_folder(ckpt, ref_file, folder, json_out=out / "drift" / f"{name}.json",
                           report=out / "drift" / f"{name}.html", log=log, **kw)
        drift[name] = {k: res[k] for k in ("drift", "p_value", "alpha", "mmd2", "frechet_distance",
                                           "n_reference", "n_new", "permutations", "novelty")}
        drift_cmds[name] = _command(["drift", "--checkpoint", str(ckpt), "--reference", str(ref_file),
                                     "--data", str(folder), "--json", str(out / "drift" / f"{name}.json"),
                                     "--report", str(out / "drift" / f"{name}.html")] + _flags(kw))
    t_drift = time.time() - t2

    log("[4/4] report")
    total = time.time() - t0
    metrics = summary["metrics"]
    result = {
        "dataset": f"{VERSION}: SYNTHETIC pictures drawn by fastmae/data/inspection.py, not photographs",
        "data_root": str(root), "train_images": n_train,
        "test_images": summary["n_images"], "threshold": summary["threshold"],
        "image_auroc": metrics.get("image_auroc"), "pixel_auroc": metrics.get("pixel_auroc"),
        "pro": metrics.get("pro"), "image_auroc_per_class": metrics.get("image_auroc_per_class", {}),
        "component_image_auroc": metrics.get("component_image_auroc", {}),
        "fpr_good": metrics.get("fpr_good"), "recall_defective": metrics.get("recall_defective"),
        "flagged": _flagged(rows), "n_flagged": summary["n_flagged"],
        "images_per_s": summary["images_per_s"],
        "drift": drift,
        "pretrain": {"steps": pre.steps, "final_loss": pre.final_loss, "img_per_s": pre.img_per_s,
                     "checkpoint": str(ckpt)},
        "recipe": r, "quick": quick, "seed": seed, "device_flag": device, "loader": loader, "kernels": kernels,
        "commands": {"train": train_cmd, "score": score_cmd,
                     **{f"drift_{k}": v for k, v in drift_cmds.items()}},
        "outputs": {"score_report": "score/report.html", "scores": "score/scores.json",
                    "reference": "reference.safetensors",
                    **{f"drift_{k}": f"drift/{k}.html" for k in drift}},
        "heatmaps": [row["heatmap"] for row in sorted(rows, key=lambda x: -x["score"]) if row["heatmap"]][:4],
        "seconds": {"pretrain": round(t_pre, 1), "score": round(t_score, 1), "drift": round(t_drift, 1),
                    "total": round(total, 1)},
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": _device(summary["device"]), "versions": {
            "fastmae": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "cpu_threads": torch.get_num_threads(),
    }
    atomic_write_json(result, out / "monitor.json")
    atomic_write_text(_report(result), out / "report.md")
    d = result["drift"]
    log(f"done in {total / 60:.1f} min: image AUROC {_f(result['image_auroc'])}, pixel AUROC "
        f"{_f(result['pixel_auroc'])}, PRO {_f(result['pro'])}; drift p = {d['fresh_good']['p_value']:.3g} "
        f"(fresh good), {d['darkened']['p_value']:.3g} (darkened); report: {out / 'report.md'}")
    return result


def _read_rows(path: Path) -> list[dict]:
    return json.loads(path.read_text())["images"]


def _flagged(rows: list[dict]) -> dict:
    """Per class: images and how many were flagged anomalous."""
    out = {}
    for row in rows:
        c = out.setdefault(row.get("label", "all"), {"images": 0, "flagged": 0})
        c["images"] += 1
        c["flagged"] += row["verdict"] == "anomalous"
    return dict(sorted(out.items()))


def _device(scorer_device: str) -> str:
    if scorer_device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(scorer_device))
    from ..downstream.demo import _device_name
    return _device_name("cpu")


def _f(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _report(res: dict) -> str:
    r, s, d = res["recipe"], res["seconds"], res["drift"]
    classes = "\n".join(f"| {c} | {v['images']} | {v['flagged']} | "
                        f"{_f(res['image_auroc_per_class'].get(c)) if c != 'good' else '-'} |"
                        for c, v in res["flagged"].items())
    drift = "\n".join(
        f"| {name.replace('_', ' ')} | {v['n_new']} vs {v['n_reference']} | {v['p_value']:.4g} | "
        f"{'**DRIFT** (exit 1)' if v['drift'] else 'no drift (exit 0)'} | [{name}.html](drift/{name}.html) |"
        for name, v in d.items())
    heat = " ".join(f"![heatmap](score/{h})" for h in res["heatmaps"])
    model = f"`{r['model']}`" + (f" with {r['model_overrides']}" if r["model_overrides"] else "")
    c = res["commands"]
    return f"""# fastmae demo --monitor: anomaly scores, heatmaps and drift from a pretrained MAE

**The data are synthetic**: the built-in inspection dataset ({res['dataset']}). Each picture is a
woven part on a conveyor at a random pose and lighting; the defects (contamination, missing pieces,
scratches, stains) come with pixel masks, in the MVTec AD layout. No real product was photographed.

The story, as an operator would run it:

1. **pretrain on good images only**: {res['train_images']} pictures of good parts (`train/good`), no labels,
   no defects;
2. **calibrate**: the reference (the good images) sets a threshold at a false-positive rate of
   {r['fpr']}, saved with its statistics in `reference.safetensors`;
3. **score** new images (`test/`): a score, a heatmap and a verdict per image;
4. **act on drift**: the drift test says when the incoming images no longer look like the reference.

## Scores against the ground truth ({res['test_images']} test images)

| image AUROC | pixel AUROC | PRO (FPR ≤ 0.3) | flagged good | recall on defective |
|---|---|---|---|---|
| **{_f(res['image_auroc'])}** | **{_f(res['pixel_auroc'])}** | {_f(res['pro'])} | {_f(res['fpr_good'])} | {_f(res['recall_defective'])} |

| class | images | flagged | image AUROC (vs good) |
|---|---|---|---|
{classes}

Threshold {res['threshold']:.3f}; scoring ran at {res['images_per_s']:.1f} images/s.
The full page, with the score histogram and every image: [score/report.html](score/report.html).

The most anomalous test images (image | heatmap):

{heat}

## Drift against the reference

| new images | new vs reference | MMD p-value | verdict at alpha {r['alpha']} | report |
|---|---|---|---|---|
{drift}

## Setup

- model {model} at {r['img_size']} px; pretraining {r['epochs']} epochs,
  batch {r['batch_size']}, blr {r['blr']}, mask ratio {r['mask_ratio']}, min crop scale {r['min_crop_scale']}
  ({res['pretrain']['steps']} steps, final loss {res['pretrain']['final_loss']:.4f})
- scoring: components {', '.join(r['components'])}, {r['rounds']} complementary-mask rounds, features after
  encoder block {r['feature_layer']} ({r['feature_center']} centring), recon smoothing {r['recon_smooth']} px,
  heatmap sigma {r['sigma']} px
- device: {res['device']}, {res['date']}; seed {res['seed']}; time: pretraining {s['pretrain']:.0f} s,
  scoring {s['score']:.0f} s, drift {s['drift']:.0f} s, total {s['total'] / 60:.1f} min

## Repeat each step by hand

```bash
{c['train']}
{c['score']}
{c['drift_fresh_good']}
{c['drift_darkened']}
```

`fastmae drift` exits 0 for no drift and 1 for drift, so a cron job can act on it. All numbers
of this run: [monitor.json](monitor.json).
"""
