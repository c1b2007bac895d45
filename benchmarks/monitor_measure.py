"""Measure monitoring on the built-in inspection dataset and record the results as JSON.

    python benchmarks/monitor_measure.py --checkpoint CKPT [--train-command "..."] [--out DIR]

1. `fastmae score` on test/ with train/good as the reference: image and pixel AUROC.
2. The false-positive rate at the calibrated threshold on fresh good images (outside every split).
3. Drift over 20 seeds, each with its own fresh good images (a held-out split: expect p > 0.05),
   the same images shifted (brightness x0.6, Gaussian blur sigma 2) and good parts on another
   background (expect p < 0.01).

Two further records against a saved reference file (--saved-reference REF --record FILE):
--null-draws N, the drift test's false-alarm rate over N independent held-out draws; and
--seed-sweep, `fastmae drift` with seeds 0-19 on the one held-out split test/good and on fixed
shifted copies of it."""
import argparse
import datetime
import json
import platform
import shlex
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from PIL import Image, ImageFilter

import fastmae
from fastmae.cli import main
from fastmae.data import builtin_dataset
from fastmae.data import inspection
from fastmae.data.inspection import VERSION, good_image
from fastmae.monitor import Scorer
from fastmae.monitor.drifting import drift_test
from fastmae.monitor.images import load_folder
from fastmae.monitor.load import load_model
from fastmae.monitor.reference import Reference

DRIFT_SEED = 1000  # fresh-image seeds of the drift tests: seed s draws good_image(i, DRIFT_SEED + s)
NULL_SEED = 2000  # and of the false-alarm draws (--null-draws)
SWEEP_SEED = 3000  # and of the other-background set of --seed-sweep
SHIFTS = {"brightness_x0.6": lambda im: Image.fromarray((np.asarray(im, np.float64) * 0.6).astype(np.uint8)),
          "blur_sigma2": lambda im: im.filter(ImageFilter.GaussianBlur(2))}


def write_fresh(folder: Path, n: int, seed: int, shift=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        im = Image.fromarray(good_image(i, seed), "RGB")
        (shift(im) if shift else im).save(folder / f"{i:04d}.png")
    return folder


def _other_belt(rng, n):
    """A different conveyor: a lighter belt with diagonal ribs instead of fine grain."""
    yy, xx = np.mgrid[0:n, 0:n]
    ribs = 12 * np.sin(2 * np.pi * (xx + yy) / (6 * inspection._SS))
    return np.repeat((rng.uniform(70, 90) + ribs)[..., None], 3, axis=2)


def write_other_background(folder: Path, n: int, seed: int) -> Path:
    """Good parts on a different background texture (a drift case)."""
    folder.mkdir(parents=True, exist_ok=True)
    with mock.patch.object(inspection, "_conveyor", _other_belt):
        for i in range(n):
            Image.fromarray(good_image(i, seed), "RGB").save(folder / f"{i:04d}.png")
    return folder


def validation_set(size, n_good=40, n_per_defect=15):
    """Held-out images for choosing settings, never test/: fresh good images (seed 2) and
    defects drawn by the dataset's own generator at seeds outside every split (200 + class)."""
    from fastmae.monitor.images import to_tensor
    imgs, labels, masks = [], [], []
    for i in range(n_good):
        imgs.append(Image.fromarray(good_image(i, 2), "RGB"))
        labels.append("good")
        masks.append(np.zeros((inspection.SIZE, inspection.SIZE), bool))
    for j, d in enumerate(inspection.DEFECTS):
        for i in range(n_per_defect):
            arr, m = inspection._render(np.random.default_rng([200 + j, i]), d)
            imgs.append(Image.fromarray(arr, "RGB"))
            labels.append(d)
            masks.append(m)
    x = torch.stack([to_tensor(im, size) for im in imgs])
    return x, np.array(labels), torch.from_numpy(np.stack(masks))


def select(a) -> dict:
    """Score the validation set under each candidate setting; the best mean of image and
    pixel AUROC wins."""
    from fastmae.monitor.metrics import auroc, pixel_auroc
    model = load_model(a.checkpoint)
    root = builtin_dataset("inspection")
    ref = load_folder(root / "train" / "good", model.img_size).images
    x, labels, masks = validation_set(model.img_size)
    y = labels != "good"
    rows = []
    for name, kw in CANDIDATES.items():
        t0 = time.perf_counter()
        scorer = Scorer(model, device="cpu", rounds=a.rounds, **kw)
        scorer.fit(ref, 0.01)
        res = scorer.score(x)
        s = res.score.numpy()
        row = {"name": name, "settings": kw, "image_auroc": auroc(s, y), "pixel_auroc": pixel_auroc(res.heatmap, masks),
               "per_class": {d: auroc(s[(labels == d) | ~y], y[(labels == d) | ~y]) for d in inspection.DEFECTS},
               "seconds": time.perf_counter() - t0}
        print(json.dumps(row), flush=True)
        rows.append(row)
    best = max(rows, key=lambda r: r["image_auroc"] + r["pixel_auroc"])
    return {"method": "validation split: 40 fresh good images (good_image seed 2) + 15 per defect class from "
                      "the dataset's generator at seeds [200 + class, i] (outside every split); reference "
                      "train/good; best mean of image and pixel AUROC; test/ never used for the choice",
            "candidates": rows, "chosen": best["name"]}


CANDIDATES = {
    "block 3, low-passed recon (2 px) + patch_novelty, sigma 1":
        {"feature_layer": 3, "components": ["recon", "patch_novelty"], "recon_smooth": 2.0, "sigma": 1.0},
    "block 3, low-passed recon (1 px) + patch_novelty, sigma 1":
        {"feature_layer": 3, "components": ["recon", "patch_novelty"], "recon_smooth": 1.0, "sigma": 1.0},
    "block 3, low-passed recon (2 px) + patch_novelty, sigma 2":
        {"feature_layer": 3, "components": ["recon", "patch_novelty"], "recon_smooth": 2.0, "sigma": 2.0},
    "block 2, low-passed recon (2 px) + patch_novelty, sigma 1":
        {"feature_layer": 2, "components": ["recon", "patch_novelty"], "recon_smooth": 2.0, "sigma": 1.0},
    "block 4, low-passed recon (2 px) + patch_novelty, sigma 1":
        {"feature_layer": 4, "components": ["recon", "patch_novelty"], "recon_smooth": 2.0, "sigma": 1.0},
    "block 3, low-passed recon (2 px) only, sigma 1":
        {"feature_layer": 3, "components": ["recon"], "recon_smooth": 2.0, "sigma": 1.0},
}
# CLI flag of each Scorer setting a candidate may carry
FLAGS = {"feature_layer": "--feature-layer", "feature_center": "--feature-center", "sigma": "--sigma",
         "recon_smooth": "--recon-smooth"}


def drift_p(scorer, ref_emb, folder: Path, size: int, seed: int) -> float:
    """The MMD p-value of the images in `folder` against the reference embeddings."""
    emb = scorer.embed(load_folder(folder, size).images)
    return drift_test(ref_emb, emb, seed=seed, permutations=1000)["p_value"]


def counts(ps) -> dict:
    """How many p-values say no drift (p > 0.05) and how many say drift (p < 0.01)."""
    return {"no_drift_p_gt_0.05": sum(p > 0.05 for p in ps), "drift_p_lt_0.01": sum(p < 0.01 for p in ps)}


def provenance(a) -> dict:
    """The fields every record of a saved-reference measurement carries."""
    return {"device": "cpu", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": {"fastmae": getattr(fastmae, "__version__", "dev"), "torch": torch.__version__},
            "checkpoint": a.checkpoint, "reference": a.saved_reference,
            "command": "python benchmarks/monitor_measure.py " + shlex.join(a.argv)}


def null_draws(a) -> None:
    """The drift test's false-alarm rate, measured: n independent draws of fresh good images
    (good_image(i, NULL_SEED + s)) against a saved reference; an exact test flags about alpha
    of them. Writes its own record."""
    model = load_model(a.checkpoint)
    scorer = Scorer(model, reference=a.saved_reference, device="cpu")
    ref_emb = scorer.reference.embeddings
    ps = []
    with tempfile.TemporaryDirectory() as tmp:
        for s in range(a.null_draws):
            folder = write_fresh(Path(tmp) / f"d{s}", a.drift_n, NULL_SEED + s)
            ps.append(drift_p(scorer, ref_emb, folder, model.img_size, s))
    ps = np.array(ps)
    record = {"what": "drift false alarms on held-out good images: independent draws against a saved reference",
              "draws": a.null_draws, "n_new": a.drift_n, "n_reference": int(ref_emb.shape[0]),
              "new_images": f"good_image(i, {NULL_SEED} + draw), i < {a.drift_n}",
              "p_values": ps.tolist(), "flagged_p_le_0.05": int((ps <= 0.05).sum()),
              "flagged_p_lt_0.01": int((ps < 0.01).sum()),
              "expected_if_exact": {"p_le_0.05": 0.05 * a.null_draws, "p_lt_0.01": 0.01 * a.null_draws},
              **provenance(a)}
    Path(a.record).write_text(json.dumps(record, indent=2) + "\n")
    print({k: record[k] for k in ("draws", "flagged_p_le_0.05", "flagged_p_lt_0.01", "expected_if_exact")})


def seed_sweep(a) -> None:
    """The drift targets read as written: one held-out split of the training distribution (the
    built-in set's test/good, which no model trains on) and fixed shifted copies of it, each
    tested by `fastmae drift` under 20 seeds (the permutation draws), exit codes included.
    The p-value then varies only with the permutations; run() measures independent splits.
    Writes its own record."""
    held = builtin_dataset("inspection") / "test" / "good"
    names = sorted(p.name for p in held.iterdir())
    base = ["drift", "--checkpoint", a.checkpoint, "--reference", a.saved_reference, "--device", "cpu"]
    sweeps = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sets = {"held_out": held}
        for name, shift in SHIFTS.items():
            (tmp / name).mkdir()
            for n in names:
                shift(Image.open(held / n).convert("RGB")).save(tmp / name / n)
            sets[name] = tmp / name
        sets["other_background"] = write_other_background(tmp / "bg", len(names), SWEEP_SEED)
        for name, folder in sets.items():
            ps, codes = [], []
            for seed in range(20):
                out = tmp / f"{name}-{seed}.json"
                codes.append(main(base + ["--data", str(folder), "--json", str(out), "--seed", str(seed)]))
                ps.append(json.loads(out.read_text())["p_value"])
            sweeps[name] = {"p_values": ps, "exit_codes": codes, "n_new": len(names), **counts(ps)}
    record = {"what": "fastmae drift on one held-out split (test/good) and fixed shifted copies, 20 seeds each",
              "held_out": str(held), "other_background": f"good_image(i, {SWEEP_SEED}) on another belt",
              "sweeps": sweeps,
              "command_per_seed": "fastmae " + shlex.join(base + ["--data", "SET", "--json", "OUT", "--seed", "SEED"]),
              **provenance(a)}
    Path(a.record).write_text(json.dumps(record, indent=2) + "\n")
    print({k: (v["no_drift_p_gt_0.05"], v["drift_p_lt_0.01"], min(v["p_values"]), max(v["p_values"]))
           for k, v in sweeps.items()})


def cli(argv, commands) -> int:
    commands.append("fastmae " + shlex.join(argv))
    return main(argv)


def run(a):
    root = builtin_dataset("inspection")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    commands, record = [], {}
    ref_file = out / "ref.safetensors"
    if a.select:
        record["selection"] = select(a)
        kw = CANDIDATES[record["selection"]["chosen"]]
        a.extra += [arg for k, v in kw.items() if k in FLAGS for arg in (FLAGS[k], str(v))]
        if "components" in kw:
            a.extra += ["--components", ",".join(kw["components"])]
    t0 = time.perf_counter()
    rc = cli(["score", "--checkpoint", a.checkpoint, "--reference", str(root / "train" / "good"),
              "--data", str(root / "test"), "--out", str(out / "score"), "--save-reference", str(ref_file),
              "--rounds", str(a.rounds), "--device", "cpu"] + a.extra, commands)
    assert rc == 0
    scored = json.loads((out / "score" / "scores.json").read_text())
    record["score"] = {k: scored[k] for k in ("metrics", "threshold", "fpr", "images_per_s", "settings",
                                              "n_images", "n_flagged")}
    record["score"]["wall_seconds"] = time.perf_counter() - t0

    model = load_model(a.checkpoint)
    scorer = Scorer(model, reference=ref_file, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fresh = load_folder(write_fresh(tmp / "fresh", a.fresh, seed=1), model.img_size)
        res = scorer.score(fresh.images)
        fpr = int(res.verdict.sum()) / a.fresh  # exact: a float32 mean is not
        record["fpr_fresh_good"] = {"n": a.fresh, "fpr_target": scorer.reference.meta["fpr"],
                                    "fpr_measured": fpr, "n_flagged": int(res.verdict.sum()),
                                    "within_2x": bool(scorer.reference.meta["fpr"] / 2 <= fpr <= 2 * scorer.reference.meta["fpr"])}
        ref_emb = Reference.load(ref_file).embeddings
        drift = {}
        for seed in range(20):  # each seed its own fresh images: 20 independent held-out splits
            d = tmp / f"drift{seed}"
            n, draw = a.drift_n, DRIFT_SEED + seed
            pools = {"held_out": write_fresh(d / "held_out", n, draw),
                     **{name: write_fresh(d / name, n, draw, shift=f) for name, f in SHIFTS.items()},
                     "other_background": write_other_background(d / "bg", n, draw)}
            for name, folder in pools.items():
                drift.setdefault(name, []).append(drift_p(scorer, ref_emb, folder, model.img_size, seed))
        drift = {name: {"p_values": ps, "n_new": a.drift_n, "n_reference": int(ref_emb.shape[0]),
                        "new_images": f"good_image(i, {DRIFT_SEED} + seed), i < {a.drift_n}", **counts(ps)}
                 for name, ps in drift.items()}
        record["drift_20_seeds"] = drift
        # The CLI's exit codes on one held-out and one shifted folder.
        write_fresh(tmp / "new_same", a.drift_n, seed=2)
        write_fresh(tmp / "new_dark", a.drift_n, seed=2, shift=SHIFTS["brightness_x0.6"])
        record["drift_cli_exit"] = {
            "held_out": cli(["drift", "--checkpoint", a.checkpoint, "--reference", str(ref_file), "--data",
                             str(tmp / "new_same"), "--json", str(out / "drift-same.json"), "--device", "cpu"], commands),
            "brightness_x0.6": cli(["drift", "--checkpoint", a.checkpoint, "--reference", str(ref_file),
                                    "--data", str(tmp / "new_dark"), "--json", str(out / "drift-dark.json"),
                                    "--report", str(out / "drift-dark.html"), "--device", "cpu"], commands)}
    record.update({
        "device": "cpu", "dataset": VERSION + " (SYNTHETIC, fastmae.data.builtin_dataset('inspection'))",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"fastmae": getattr(fastmae, "__version__", "dev"), "torch": torch.__version__,
                     "python": platform.python_version()},
        "commands": ([a.train_command] if a.train_command else []) + commands
        + ["python benchmarks/monitor_measure.py " + shlex.join(a.argv)],
        "checkpoint": a.checkpoint})
    m, d = record["score"]["metrics"], record["drift_20_seeds"]
    record["targets"] = {"image_auroc": ">= 0.90", "pixel_auroc": ">= 0.90", "fpr": "within 2x of --fpr",
                         "drift_held_out": ">= 19/20 seeds p > 0.05", "drift_shifted": "20/20 seeds p < 0.01"}
    record["verdict"] = {
        "image_auroc": ("met" if m["image_auroc"] >= 0.9 else "MISSED") + f" ({m['image_auroc']:.3f})",
        "pixel_auroc": ("met" if m.get("pixel_auroc", 0) >= 0.9 else "MISSED") + f" ({m.get('pixel_auroc', 0):.3f})",
        "fpr": ("met" if record["fpr_fresh_good"]["within_2x"] else "MISSED")
        + f" ({record['fpr_fresh_good']['n_flagged']} of {record['fpr_fresh_good']['n']} fresh good images)",
        **{f"drift_{k}": f"{v['no_drift_p_gt_0.05']}/20 p > 0.05, {v['drift_p_lt_0.01']}/20 p < 0.01"
           for k, v in d.items()}}
    name = Path(a.record or f"benchmarks/results/monitor-cpu-{datetime.date.today().isoformat()}.json")
    name.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("score", "fpr_fresh_good", "drift_cli_exit")}, indent=1)[:3000])
    print({k: (v["no_drift_p_gt_0.05"], v["drift_p_lt_0.01"]) for k, v in record["drift_20_seeds"].items()})
    print("recorded", name)


if __name__ == "__main__":
    import sys
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", default="monitor-measure")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--fresh", type=int, default=1000, help="fresh good images for the false-positive rate")
    p.add_argument("--drift-n", type=int, default=50, help="new images per drift test")
    p.add_argument("--train-command", default=None)
    p.add_argument("--record", default=None)
    p.add_argument("--select", action="store_true",
                   help="choose the scoring settings on a validation split first (never test/)")
    p.add_argument("--null-draws", type=int, default=0,
                   help="instead: the drift test's false-alarm rate over this many fresh draws (needs "
                        "--saved-reference and --record)")
    p.add_argument("--seed-sweep", action="store_true",
                   help="instead: `fastmae drift` on test/good and shifted copies of it, 20 seeds each (needs "
                        "--saved-reference and --record)")
    p.add_argument("--saved-reference", "--null-reference", default=None,
                   help="a saved reference file (fastmae score --save-reference)")
    p.add_argument("extra", nargs="*", help="extra `fastmae score` flags (after --)")
    a = p.parse_args()
    a.argv = sys.argv[1:]
    if a.null_draws or a.seed_sweep:
        if not (a.saved_reference and a.record):
            p.error("--null-draws and --seed-sweep need --saved-reference and --record")
        if a.null_draws:
            null_draws(a)
        else:
            seed_sweep(a)
    else:
        run(a)
