"""Measure monitoring on the built-in inspection dataset and record the results as JSON.

    python benchmarks/monitor_measure.py --checkpoint CKPT [--train-command "..."] [--out DIR]

1. `fastmae score` on test/ with train/good as the reference: image and pixel AUROC.
2. The false-positive rate at the calibrated threshold on fresh good images (outside every split).
3. Drift over 20 seeds: a held-out sample of fresh good images (expect p > 0.05) and the same
   images shifted (brightness x0.6, Gaussian blur sigma 2): expect p < 0.01."""
import argparse
import datetime
import json
import platform
import shlex
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

import fastmae
from fastmae.cli import main
from fastmae.data import builtin_dataset
from fastmae.data.inspection import VERSION, good_image
from fastmae.monitor import Scorer
from fastmae.monitor.drifting import drift_test
from fastmae.monitor.images import load_folder
from fastmae.monitor.load import load_model
from fastmae.monitor.reference import Reference

SHIFTS = {"brightness_x0.6": lambda im: Image.fromarray((np.asarray(im, np.float64) * 0.6).astype(np.uint8)),
          "blur_sigma2": lambda im: im.filter(ImageFilter.GaussianBlur(2))}


def write_fresh(folder: Path, n: int, seed: int, shift=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        im = Image.fromarray(good_image(i, seed), "RGB")
        (shift(im) if shift else im).save(folder / f"{i:04d}.png")
    return folder


def cli(argv, commands) -> int:
    commands.append("fastmae " + shlex.join(argv))
    return main(argv)


def run(a):
    root = builtin_dataset("inspection")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    commands, record = [], {}
    ref_file = out / "ref.safetensors"
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
        fpr = float(res.verdict.float().mean())
        record["fpr_fresh_good"] = {"n": a.fresh, "fpr_target": scorer.reference.meta["fpr"],
                                    "fpr_measured": fpr, "n_flagged": int(res.verdict.sum()),
                                    "within_2x": bool(scorer.reference.meta["fpr"] / 2 <= fpr <= 2 * scorer.reference.meta["fpr"])}
        ref_emb = Reference.load(ref_file).embeddings
        pools = {"held_out": scorer.embed(fresh.images)}
        for name, f in SHIFTS.items():
            pools[name] = scorer.embed(load_folder(write_fresh(tmp / name, a.fresh, seed=1, shift=f),
                                                   model.img_size).images)
        drift = {}
        for name, emb in pools.items():
            ps = []
            for seed in range(20):
                g = torch.Generator().manual_seed(seed)
                pick = torch.randperm(emb.shape[0], generator=g)[:a.drift_n]
                ps.append(drift_test(ref_emb, emb[pick], seed=seed, permutations=1000)["p_value"])
            drift[name] = {"p_values": ps, "n_new": a.drift_n, "n_reference": int(ref_emb.shape[0]),
                           "no_drift_p_gt_0.05": sum(p > 0.05 for p in ps),
                           "drift_p_lt_0.01": sum(p < 0.01 for p in ps)}
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
    p.add_argument("--fresh", type=int, default=300, help="fresh good images (FPR, drift pools)")
    p.add_argument("--drift-n", type=int, default=50, help="new images per drift test")
    p.add_argument("--train-command", default=None)
    p.add_argument("--record", default=None)
    p.add_argument("extra", nargs="*", help="extra `fastmae score` flags (after --)")
    a = p.parse_args()
    a.argv = sys.argv[1:]
    run(a)
