"""`fastmae demo`: the whole story on the built-in dataset, on a CPU.

1. pretrain an MAE on the training images WITHOUT their labels (fastmae.train.pretrain);
2. fine-tune it with a few labels per class;
3. train the same ViT from random init on the same few labels, same recipe (the baseline);
4. write report.md (reconstructions, loss curve, both accuracies, confusion matrices) and
   demo.json with the real numbers of this run."""
import dataclasses
import os
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from .. import __version__, data
from ..data.transforms import mean_std
from ..settings import ConfigError, TrainingError
from ..pictures import save_curves, save_reconstructions
from ..files import atomic_write_json, atomic_write_text
from .finetune import FinetuneConfig, finetune
from .images import load_batch
from .knn import knn_run
from .pretrained import load_mae


@dataclass
class DemoConfig:
    output_dir: str = "./fastmae-demo"
    seed: int = 0
    model: str = "mae_vit_micro_patch4"
    model_overrides: dict = field(default_factory=dict)
    img_size: int = 32
    mask_ratio: float = 0.75
    pretrain_epochs: int = 30
    pretrain_blr: float = 1.5e-3
    pretrain_batch_size: int = 64
    labels_per_class: int = 50        # of ~200 per class: a quarter of the labels
    finetune_epochs: int = 40
    finetune_batch_size: int = 32
    finetune_blr: float = 5e-3
    layer_decay: float | None = 0.75
    warmup_epochs: float = 5
    eval_every: int = 10
    device: str = "auto"
    kernels: str = "auto"
    loader: str = "torch"             # the torchvision loader: the path the demo was measured with
    num_workers: int | None = None
    progress: bool = True
    curve: bool = False               # also run the --quick label curve (fastmae label-curve)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


QUICK = dict(pretrain_epochs=30, finetune_epochs=20)


def quick_config(**kw) -> DemoConfig:
    """The --quick demo: half the fine-tuning epochs (about 8 instead of 11 CPU minutes)."""
    return DemoConfig(**{**QUICK, **kw})


def _finetune_cfg(cfg: DemoConfig, out: Path, checkpoint, scratch: bool) -> FinetuneConfig:
    return FinetuneConfig(checkpoint=str(checkpoint), from_scratch=scratch, data=None,
                          labels_per_class=cfg.labels_per_class, epochs=cfg.finetune_epochs,
                          batch_size=cfg.finetune_batch_size, blr=cfg.finetune_blr,
                          warmup_epochs=min(cfg.warmup_epochs, cfg.finetune_epochs / 2),
                          layer_decay=cfg.layer_decay, eval_every=cfg.eval_every, loader=cfg.loader,
                          num_workers=cfg.num_workers, device=cfg.device, seed=cfg.seed,
                          output_dir=str(out / ("finetune-scratch" if scratch else "finetune-pretrained")),
                          progress=cfg.progress)


def _pretrain(cfg: DemoConfig, out: Path, log):
    from ..train import TrainConfig, pretrain
    tc = TrainConfig(data=None, model=cfg.model, epochs=cfg.pretrain_epochs,
                     batch_size=cfg.pretrain_batch_size, blr=cfg.pretrain_blr,
                     warmup_epochs=min(cfg.warmup_epochs, cfg.pretrain_epochs / 2),
                     mask_ratio=cfg.mask_ratio, img_size=cfg.img_size, kernels=cfg.kernels,
                     loader=cfg.loader, num_workers=cfg.num_workers, device=cfg.device,
                     output_dir=str(out / "pretrain"), resume="none", seed=cfg.seed,
                     model_overrides=dict(cfg.model_overrides))
    return pretrain(tc, log=log)


def _rel(path: Path, base: Path) -> str:
    return str(Path(path).resolve().relative_to(base.resolve()))


def run_demo(cfg: DemoConfig, log=print) -> dict:
    if cfg.labels_per_class < 1:
        raise ConfigError("--labels-per-class must be at least 1")
    out = Path(cfg.output_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    t0 = time.time()

    log(f"[1/4] pretraining {cfg.model} on the built-in dataset's images, without labels "
        f"({cfg.pretrain_epochs} epochs, mask ratio {cfg.mask_ratio})")
    pre = _pretrain(cfg, out, log)
    t_pre = time.time() - t0
    if pre.checkpoint is None:
        raise TrainingError("pretraining stopped before writing a checkpoint")

    log(f"[2/4] fine-tuning the pretrained encoder on {cfg.labels_per_class} labels per class")
    t1 = time.time()
    ft = finetune(_finetune_cfg(cfg, out, pre.checkpoint, scratch=False))
    t_ft = time.time() - t1
    log(f"      pretrained: top-1 {ft.final_acc1:.1f}% on {ft.val_images} held-out images")

    log(f"[3/4] training the same ViT from scratch on the same {ft.train_images} labelled images")
    t2 = time.time()
    sc = finetune(_finetune_cfg(cfg, out, pre.checkpoint, scratch=True))
    t_sc = time.time() - t2
    log(f"      from scratch: top-1 {sc.final_acc1:.1f}%")

    log("[4/4] k-NN of the frozen features, pictures and report")
    knn, _, _ = knn_run(pre.checkpoint, labels_per_class=cfg.labels_per_class, loader=cfg.loader,
                        num_workers=cfg.num_workers, device=cfg.device, seed=cfg.seed)
    mae = load_mae(pre.checkpoint, kernels=cfg.kernels)
    val = data.scan(data.builtin_dataset("val"))
    # one picture of each of the first classes, from the held-out split
    firsts = {}
    for p, y in zip(val.paths, val.labels):
        firsts.setdefault(y, p)
    paths = [firsts[y] for y in sorted(firsts)][:6]
    mean, std = mean_std(mae.in_chans)
    save_reconstructions(mae, load_batch(paths, mae.img_size[0], mae.in_chans), out / "reconstructions.png",
                         mask_ratio=cfg.mask_ratio, seed=cfg.seed, mean=mean, std=std)
    hist = [h for h in pre.history if "loss" in h and "step" in h]
    save_curves({"pretraining loss": ([h["step"] for h in hist], [h["loss"] for h in hist])},
                out / "pretrain_loss.png", xlabel="optimizer step", ylabel="masked-patch MSE",
                title="MAE pretraining (no labels)")
    save_curves({"pretrained": ([r["epoch"] for r in ft.history if "val_acc1" in r],
                                [r["val_acc1"] for r in ft.history if "val_acc1" in r]),
                 "from scratch": ([r["epoch"] for r in sc.history if "val_acc1" in r],
                                  [r["val_acc1"] for r in sc.history if "val_acc1" in r])},
                out / "finetune_accuracy.png", xlabel="fine-tuning epoch", ylabel="held-out top-1 (%)",
                title=f"{cfg.labels_per_class} labels per class")
    total = time.time() - t0
    result = {
        # the last epoch's accuracy: no model selection on the held-out images
        "pretrained_acc": ft.final_acc1, "scratch_acc": sc.final_acc1,
        "pretrained_acc5": _final(ft, "val_acc5"), "scratch_acc5": _final(sc, "val_acc5"),
        "pretrained_best_acc": ft.best_acc1, "scratch_best_acc": sc.best_acc1,
        "knn_acc": knn["acc1"], "gain": round(ft.final_acc1 - sc.final_acc1, 2),
        "labels_per_class": cfg.labels_per_class, "train_images": ft.train_images,
        "val_images": ft.val_images, "classes": ft.classes,
        "pretrain_images": len(data.scan(data.builtin_dataset("train"))),
        "pretrain_final_loss": pre.final_loss, "pretrain_steps": pre.steps,
        "checkpoint": str(pre.checkpoint),
        "seconds": {"pretrain": round(t_pre, 1), "finetune_pretrained": round(t_ft, 1),
                    "finetune_scratch": round(t_sc, 1), "total": round(total, 1)},
        "config": cfg.to_dict(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": _device_name(cfg.device), "torch": torch.__version__, "fastmae": __version__,
        "cpu_threads": torch.get_num_threads(), "python": platform.python_version(),
    }
    if cfg.curve:
        from .label_curve import QUICK as CURVE_QUICK, CurveConfig, label_curve
        log("[+] label curve: accuracy against labels per class, pretrained vs scratch (--quick)")
        lc = label_curve(CurveConfig(**{**CURVE_QUICK, "loader": cfg.loader}, checkpoint=str(pre.checkpoint),
                                     output_dir=str(out / "label-curve"), device=cfg.device,
                                     num_workers=cfg.num_workers, progress=cfg.progress), log=log)
        result["label_curve"] = {"headline": lc["headline"], "points": lc["points"],
                                 "labels_saved": lc["labels_saved"]}
    atomic_write_json(result, out / "demo.json")
    report = _report(result, out, ft, sc)
    if cfg.curve:
        report += ("\n## How many labels does pretraining save?\n\n![label curve](label-curve/curve.png)\n\n"
                   f"{result['label_curve']['headline']}. Table: [label-curve/curve.md](label-curve/curve.md).\n")
    atomic_write_text(report, out / "report.md")
    log(f"done in {total / 60:.1f} min: pretrained {ft.final_acc1:.1f}% vs scratch {sc.final_acc1:.1f}% "
        f"top-1 ({cfg.labels_per_class} labels per class); report: {out / 'report.md'}")
    return result


def _final(run, key: str) -> float:
    return next(r[key] for r in reversed(run.history) if key in r)


def _device_name(device: str) -> str:
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name)
    except OSError:
        pass
    return f"CPU ({name}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def _report(r: dict, out: Path, ft, sc) -> str:
    c = r["config"]
    s = r["seconds"]
    return f"""# fastmae demo: MAE pretraining vs training from scratch, with few labels

Data: the built-in SYNTHETIC dataset (10 shape classes on textured backgrounds).
Pretraining used its {r['pretrain_images']} training images **without labels**; both
classifiers then saw the same {r['train_images']} labelled images ({r['labels_per_class']} per
class) and were evaluated on {r['val_images']} held-out images.

| | top-1 | top-5 |
|---|---|---|
| MAE-pretrained, fine-tuned | **{r['pretrained_acc']:.1f}%** | {r['pretrained_acc5']:.1f}% |
| same ViT from scratch | {r['scratch_acc']:.1f}% | {r['scratch_acc5']:.1f}% |
| k-NN on frozen MAE features (k=20) | {r['knn_acc']:.1f}% | |

(Frozen MAE features are weak under k-NN / linear evaluation - the paper reports the
same; the encoder pays off once it is fine-tuned.)

Accuracy after the last fine-tuning epoch (no model selection on the held-out images; the
best of the evaluated epochs: pretrained {r['pretrained_best_acc']:.1f}%, scratch
{r['scratch_best_acc']:.1f}%). Device: {r['device']}, {r['date']}; time: pretraining
{s['pretrain']:.0f} s, fine-tuning {s['finetune_pretrained']:.0f} s, scratch {s['finetune_scratch']:.0f} s,
total {s['total'] / 60:.1f} min.

## Setup

- model: `{c['model']}` {c['model_overrides'] or ''} at {c['img_size']} px, mask ratio {c['mask_ratio']}
- pretraining: {c['pretrain_epochs']} epochs, batch {c['pretrain_batch_size']}, blr {c['pretrain_blr']}
  ({r['pretrain_steps']} steps, final loss {r['pretrain_final_loss']:.4f})
- fine-tuning (both runs): {c['finetune_epochs']} epochs, batch {c['finetune_batch_size']}, blr
  {c['finetune_blr']}, layer decay {c['layer_decay']}, drop path 0.1, label smoothing 0.1, seed {c['seed']}
- pretrained checkpoint: `{r['checkpoint']}`

## Reconstructions (held-out images)

original | masked | reconstruction | reconstruction + visible patches

![reconstructions](reconstructions.png)

## Pretraining loss

![pretraining loss](pretrain_loss.png)

## Held-out accuracy during fine-tuning

![accuracy](finetune_accuracy.png)

## Confusion matrices (best evaluated epoch)

| pretrained | from scratch |
|---|---|
| ![pretrained]({_rel(ft.output_dir / 'confusion_matrix.png', out)}) | ![scratch]({_rel(sc.output_dir / 'confusion_matrix.png', out)}) |

Reproduce: `fastmae demo --output-dir {out}{' --quick' if all(c[k] == v for k, v in QUICK.items()) else ''}`
(numbers vary with the machine's floating point and thread count; seed {c['seed']}).
"""
