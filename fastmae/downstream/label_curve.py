"""`fastmae label-curve`: how many labels pretraining saves. For every label budget and
seed, two arms train with the same recipe on the same labelled images and are evaluated on
the same held-out images: the pretrained encoder (fine-tuned, linearly probed, or k-NN on
its frozen features) and the same ViT from random init (trained from scratch, or its
frozen random features for linprobe / k-NN).

Each (budget, seed, arm) result is written atomically to runs/<point>.json as it finishes;
a curve started again in the same folder skips the finished points, so a killed curve
continues where it stopped, and a curve can be extended with more budgets or seeds.
The recipe is fixed per folder (plan.json): a different recipe needs another folder."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .. import __version__
from ..files import atomic_write_json, atomic_write_text
from ..settings import ConfigError, DataError
from . import curve_report

PROTOCOLS = ("finetune", "linprobe", "knn")
DEFAULT_BUDGETS = (1, 2, 5, 10, 25, 50, None)  # None = every training label
ARM_NAMES = {"finetune": {"pretrained": "MAE-pretrained, fine-tuned", "scratch": "same ViT from scratch"},
             "linprobe": {"pretrained": "linear probe, MAE features", "scratch": "linear probe, random-init features"},
             "knn": {"pretrained": "k-NN, MAE features", "scratch": "k-NN, random-init features"}}


@dataclass
class CurveConfig:
    checkpoint: str | None = None
    data: str | None = None            # None = the built-in dataset
    val: str | None = None
    holdout_fraction: float = 0.2
    budgets: tuple = DEFAULT_BUDGETS   # labels per class; None = all
    seeds: int = 3
    protocol: str = "finetune"
    output_dir: str = "./label-curve"
    workers: int = 1
    # the recipe, the same for both arms; the training length is clamped to
    # [min_steps, max_steps] optimizer steps (0 = no bound) so that 1 label per class still
    # trains and "all" stays affordable
    epochs: int = 50
    min_steps: int = 0
    max_steps: int = 0
    batch_size: int = 64
    blr: float | None = None           # default: the protocol's (finetune 5e-4, linprobe 0.1)
    layer_decay: float | None = None
    warmup_fraction: float = 0.1       # of each run's epochs
    k: int = 20                        # knn
    extra: dict = field(default_factory=dict)  # further FinetuneConfig / LinprobeConfig fields
    loader: str = "auto"
    num_workers: int | None = None
    device: str = "auto"
    precision: str | None = None
    attn: str = "auto"
    keep_checkpoints: bool = False
    progress: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def recipe(self) -> dict:
        """What must not change between two runs that share one folder."""
        skip = {"budgets", "seeds", "output_dir", "workers", "progress", "num_workers", "keep_checkpoints"}
        return {k: v for k, v in self.to_dict().items() if k not in skip}


# The --quick curve: the demo's recipe (which measured pretrained 27.8% vs scratch 14.4% at
# 50 labels per class), four budgets, one seed, every run 60-200 optimizer steps.
QUICK = dict(budgets=(2, 10, 50, None), seeds=1, epochs=40, min_steps=60, max_steps=200,
             batch_size=32, blr=5e-3, layer_decay=0.75, loader="torch")


def parse_budgets(text: str) -> tuple:
    """'1,2,5,all' -> (1, 2, 5, None), sorted, "all" last."""
    out = []
    for part in str(text).split(","):
        part = part.strip().lower()
        if not part:
            continue
        if part == "all":
            out.append(None)
            continue
        try:
            n = int(part)
        except ValueError:
            raise ConfigError(f"--labels-per-class: {part!r} is neither a whole number nor 'all'") from None
        if n < 1:
            raise ConfigError(f"--labels-per-class: {n} is not a positive number of labels")
        out.append(n)
    if not out:
        raise ConfigError("--labels-per-class needs at least one budget, e.g. 1,5,25,all")
    nums = sorted(set(b for b in out if b is not None))
    return tuple(nums) + ((None,) if None in out else ())


def budget_name(b) -> str:
    return "all" if b is None else str(b)


def point_name(protocol: str, budget, seed: int, arm: str) -> str:
    return f"{protocol}-lpc{budget_name(budget)}-seed{seed}-{arm}"


def check_config(cfg: CurveConfig) -> None:
    checks = [(cfg.checkpoint is not None, "label-curve needs --checkpoint (a pretrained MAE)"),
              (cfg.protocol in PROTOCOLS, f"unknown --protocol {cfg.protocol!r}; choose one of {', '.join(PROTOCOLS)}"),
              (cfg.seeds >= 1, "--seeds must be at least 1"),
              (cfg.workers >= 1, "--workers must be at least 1"),
              (cfg.epochs >= 1, "--epochs must be at least 1"),
              (cfg.batch_size >= 2, "--batch-size must be at least 2"),
              (cfg.min_steps >= 0 and cfg.max_steps >= 0, "--min-steps and --max-steps must be >= 0"),
              (not cfg.max_steps or cfg.max_steps >= cfg.min_steps, "--max-steps must be >= --min-steps"),
              (0 <= cfg.warmup_fraction < 1, "--warmup-fraction must be in [0, 1)"),
              (len(cfg.budgets) >= 1, "give at least one label budget")]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)


def run_epochs(cfg: CurveConfig, n_train: int) -> int:
    """Epochs of one run with n_train labelled images: cfg.epochs, stretched or cut so that
    the run makes between min_steps and max_steps optimizer steps (same for both arms)."""
    per_epoch = max(1, n_train // min(cfg.batch_size, n_train))
    steps = cfg.epochs * per_epoch
    if cfg.min_steps:
        steps = max(steps, cfg.min_steps)
    if cfg.max_steps:
        steps = min(steps, cfg.max_steps)
    return max(1, math.ceil(steps / per_epoch))


def fixed_split(cfg: CurveConfig, out: Path) -> dict:
    """Resolve the labelled data once and write it as two file lists, so every run of the
    curve trains from the same pool and is evaluated on the same held-out images (a
    held-out share of --data would otherwise depend on each run's seed)."""
    from ..data.check import write_list
    from .splits import resolve

    sp = resolve(cfg.data, cfg.val, holdout_fraction=cfg.holdout_fraction, seed=0)
    counts = [0] * len(sp.classes)
    for y in sp.train.labels:
        counts[y] += 1
    split = out / "split"
    train_list, val_list = split / "train.txt", split / "val.txt"
    if not (train_list.is_file() and val_list.is_file()):
        write_list(sp.val, str(val_list))
        write_list(sp.train, str(train_list))
    return {"train": str(train_list), "val": str(val_list), "classes": sp.classes,
            "per_class": counts, "train_images": len(sp.train), "val_images": len(sp.val),
            "val_from": sp.how}


def _random_init(checkpoint: str, path: Path, seed: int) -> str:
    """The pretrained checkpoint's architecture at random init, as a .safetensors file: the
    scratch arm of linprobe / k-NN (frozen random features)."""
    if path.is_file():
        return str(path)
    import torch

    from ..interop import save_safetensors
    from ..models.mae import MaskedAutoencoderViT
    from .pretrained import load_mae

    config = load_mae(checkpoint).config
    torch.manual_seed(seed)
    save_safetensors(MaskedAutoencoderViT(**config), path, config)
    return str(path)


def run_point(cfg_dict: dict, split: dict, budget, seed: int, arm: str, threads: int | None = None) -> dict:
    """Train and evaluate one (budget, seed, arm); write runs/<point>.json atomically."""
    if threads:
        import torch
        torch.set_num_threads(threads)
    cfg = CurveConfig(**cfg_dict)
    out = Path(cfg.output_dir)
    name = point_name(cfg.protocol, budget, seed, arm)
    run_dir = out / "runs" / name
    if run_dir.exists():  # a run killed half-way starts again
        shutil.rmtree(run_dir)
    n_train = len(split["classes"]) * budget if budget is not None else split["train_images"]
    epochs = run_epochs(cfg, n_train)
    common = dict(data=split["train"], val=split["val"], labels_per_class=budget, seed=seed,
                  loader=cfg.loader, num_workers=cfg.num_workers, device=cfg.device,
                  precision=cfg.precision, attn=cfg.attn)
    t0 = time.time()
    if cfg.protocol == "finetune":
        from .finetune import FinetuneConfig, finetune
        ft = dict(checkpoint=cfg.checkpoint, from_scratch=arm == "scratch", epochs=epochs,
                  batch_size=cfg.batch_size, warmup_epochs=cfg.warmup_fraction * epochs,
                  layer_decay=cfg.layer_decay, eval_every=epochs, output_dir=str(run_dir),
                  progress=False, **common)
        if cfg.blr is not None:
            ft["blr"] = cfg.blr
        r = finetune(FinetuneConfig(**{**ft, **cfg.extra}))
        res = {"acc1": r.final_acc1, "acc5": _last(r.history, "val_acc5"), "best_acc1": r.best_acc1,
               "train_images": r.train_images, "val_images": r.val_images}
    elif cfg.protocol == "linprobe":
        from .linprobe import LinprobeConfig, linprobe
        ckpt = cfg.checkpoint if arm == "pretrained" else _random_init(
            cfg.checkpoint, out / "runs" / f"random-init-seed{seed}.safetensors", seed)
        lp = dict(checkpoint=ckpt, epochs=epochs, batch_size=cfg.batch_size,
                  warmup_epochs=cfg.warmup_fraction * epochs, output_dir=str(run_dir), progress=False,
                  **common)
        if cfg.blr is not None:
            lp["blr"] = cfg.blr
        r = linprobe(LinprobeConfig(**{**lp, **cfg.extra}))
        res = {"acc1": r["final_acc1"], "acc5": r["history"][-1]["val_acc5"], "best_acc1": r["best_acc1"],
               "train_images": r["train_images"], "val_images": r["val_images"]}
    else:
        from .knn import knn_run
        ckpt = cfg.checkpoint if arm == "pretrained" else _random_init(
            cfg.checkpoint, out / "runs" / f"random-init-seed{seed}.safetensors", seed)
        m, _, _ = knn_run(ckpt, k=cfg.k, **common, **cfg.extra)
        epochs = 0
        res = {"acc1": m["acc1"], "acc5": m["acc5"], "best_acc1": m["acc1"],
               "train_images": m["train_images"], "val_images": m["val_images"]}
    if not cfg.keep_checkpoints and run_dir.is_dir():
        for p in run_dir.glob("*.pth"):
            p.unlink()
    res.update(point=name, protocol=cfg.protocol, labels_per_class=budget, seed=seed, arm=arm,
               epochs=epochs, seconds=round(time.time() - t0, 1),
               date=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    atomic_write_json(res, out / "runs" / f"{name}.json")
    return res


def _last(history: list[dict], key: str):
    return next((r[key] for r in reversed(history) if key in r), None)


def _check_plan(cfg: CurveConfig, out: Path) -> None:
    plan = out / "plan.json"
    recipe = json.loads(json.dumps(cfg.recipe()))  # tuples -> lists, as stored
    if plan.is_file():
        old = json.loads(plan.read_text())
        diff = sorted(k for k in set(old) | set(recipe) if old.get(k) != recipe.get(k))
        if diff:
            raise ConfigError(f"{out} holds a curve made with another recipe (differs in: "
                              f"{', '.join(diff)}); use another --out, or the same settings to continue it")
    else:
        atomic_write_json(recipe, plan)


def _check_budgets(cfg: CurveConfig, split: dict) -> None:
    smallest = min(split["per_class"]) if split["per_class"] else 0
    too_big = [b for b in cfg.budgets if b is not None and b > smallest]
    if too_big:
        c = split["classes"][split["per_class"].index(smallest)]
        raise DataError(f"class {c!r} has only {smallest} training images, fewer than the budget(s) "
                        f"{', '.join(map(str, too_big))}; use smaller budgets or 'all'")


def done_runs(out: Path, cfg: CurveConfig) -> dict[str, dict]:
    runs = {}
    for p in sorted((out / "runs").glob(f"{cfg.protocol}-*.json")):
        try:
            r = json.loads(p.read_text())
        except (OSError, ValueError):
            continue  # never half-written (atomic), but a stray file must not stop a curve
        runs[r.get("point", p.stem)] = r
    return runs


def label_curve(cfg: CurveConfig, log=print) -> dict:
    check_config(cfg)
    out = Path(cfg.output_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    cfg = dataclasses.replace(cfg, output_dir=str(out), budgets=tuple(cfg.budgets))
    _check_plan(cfg, out)
    split = fixed_split(cfg, out)
    _check_budgets(cfg, split)
    points = [(b, s, arm) for b in cfg.budgets for s in range(cfg.seeds) for arm in curve_report.ARMS]
    done = done_runs(out, cfg)
    todo = [p for p in points if point_name(cfg.protocol, *p) not in done]
    log(f"label curve ({cfg.protocol}): {len(points)} runs, {len(points) - len(todo)} already done, "
        f"{len(todo)} to run; {split['train_images']} labelled training images in {len(split['classes'])} "
        f"classes, {split['val_images']} held-out")
    t0 = time.time()
    cfg_dict = cfg.to_dict()
    if cfg.workers == 1 or len(todo) <= 1:
        for i, p in enumerate(todo):
            r = run_point(cfg_dict, split, *p)
            done[r["point"]] = r
            _log_point(log, r, i + 1, len(todo), t0)
            write_outputs(cfg, split, done, points, picture=False)
    else:
        import multiprocessing as mp
        threads = max(1, (os.cpu_count() or 1) // cfg.workers)
        with ProcessPoolExecutor(cfg.workers, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(run_point, cfg_dict, split, *p, threads) for p in todo]
            for i, f in enumerate(as_completed(futures)):
                r = f.result()
                done[r["point"]] = r
                _log_point(log, r, i + 1, len(todo), t0)
                write_outputs(cfg, split, done, points, picture=False)
    return write_outputs(cfg, split, done, points)


def _log_point(log, r: dict, i: int, n: int, t0: float) -> None:
    log(f"[{i}/{n}] {budget_name(r['labels_per_class'])} labels/class, seed {r['seed']}, {r['arm']}: "
        f"top-1 {r['acc1']:.1f}% ({r['seconds']:.0f} s; {time.time() - t0:.0f} s so far)")


def write_outputs(cfg: CurveConfig, split: dict, done: dict, points: list, picture: bool = True) -> dict:
    """curve.json, curve.md (and curve.png) from the runs of `points` finished so far."""
    out = Path(cfg.output_dir)
    runs = [done[n] for n in (point_name(cfg.protocol, *p) for p in points) if n in done]
    per_class_all = split["train_images"] / max(1, len(split["classes"]))
    rows = curve_report.summarise(runs, list(cfg.budgets), per_class_all)
    saved = curve_report.labels_saved(rows)
    title = f"label curve: {cfg.protocol}, {Path(str(cfg.checkpoint)).name}"
    result = {"what": "held-out top-1 (%) against labelled images per class, pretrained vs "
                      "random-init, same recipe and images; accuracy after the last epoch",
              "protocol": cfg.protocol, "arms": ARM_NAMES[cfg.protocol], "complete": len(runs) == len(points),
              "points": rows, "labels_saved": saved, "headline": curve_report.headline(
                  saved, curve_report.within_noise(rows, split["val_images"])),
              "standard_error_max": max((curve_report.standard_error(r["mean"], split["val_images"])
                                         for r in rows), default=None),
              "runs": runs, "split": {k: split[k] for k in ("classes", "per_class", "train_images",
                                                           "val_images", "val_from")},
              "config": json.loads(json.dumps(cfg.to_dict())), "fastmae": __version__,
              "python": sys.version.split()[0]}
    atomic_write_json(result, out / "curve.json")
    atomic_write_text(curve_report.markdown(rows, saved, title, split["val_images"]), out / "curve.md")
    if rows and picture:
        curve_report.save_plot(rows, out / "curve.png", title, ARM_NAMES[cfg.protocol])
    return result
