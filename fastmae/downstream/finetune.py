"""End-to-end fine-tuning of a pretrained MAE encoder (or the same ViT from random init),
the official main_finetune.py recipe: AdamW with layer-wise lr decay, lr = blr * effective
batch / 256 with per-iteration warmup + half-cycle cosine, drop path, label smoothing,
optional mixup/cutmix; top-1/top-5 on held-out images after every epoch; the best model
kept as checkpoint-best.pth, a confusion matrix and metrics.json beside it."""
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import __version__
from ..data.transforms import EvalTransform
from ..files import atomic_torch_save, atomic_write_json
from ..pictures import save_confusion_matrix, save_curves
from ..progress import Progress
from ..settings import CheckpointError, ConfigError, DataError, TrainingError, adamw, autocast
from ..train.schedule import lr_at, set_lr
from .common import evaluate, labelled_run, make_loaders
from .lr_decay import param_groups_lrd
from .mixup import Mixup, soft_target_cross_entropy
from .pretrained import build_classifier, default_layer_decay

BEST, LAST = "checkpoint-best.pth", "checkpoint-last.pth"
BETAS = (0.9, 0.999)  # main_finetune.py keeps AdamW's default betas


@dataclass
class FinetuneConfig:
    checkpoint: str | None = None     # pretrained MAE (fastmae / official / safetensors / HF)
    model: str | None = None          # a registry name, for --from-scratch without a checkpoint
    model_overrides: dict = field(default_factory=dict)
    from_scratch: bool = False
    data: str | None = None           # None = built-in dataset
    val: str | None = None
    holdout_fraction: float = 0.2
    labels_per_class: int | None = None
    label_fraction: float | None = None
    img_size: int | None = None       # default: the checkpoint's
    global_pool: bool = True
    epochs: int = 50
    batch_size: int = 64
    accum_iter: int = 1
    blr: float = 5e-4
    lr: float | None = None
    min_lr: float = 1e-6
    warmup_epochs: float = 5
    weight_decay: float = 0.05
    layer_decay: float | None = None  # default 0.65 (ViT-B and smaller) / 0.75 (deeper)
    drop_path: float = 0.1
    smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    clip_grad: float | None = None
    loader: str = "auto"
    num_workers: int | None = None
    device: str = "auto"
    precision: str | None = None      # settings.PRECISIONS; unset: bf16 on CUDA, fp32 on CPU
    attn: str = "auto"
    seed: int = 0
    output_dir: str = "./output_finetune"
    resume: str | None = None         # a checkpoint-last.pth of an earlier run
    eval_every: int = 1
    progress: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class FinetuneResult:
    output_dir: Path
    checkpoint: Path                  # checkpoint-best.pth
    best_acc1: float
    best_acc5: float
    best_epoch: int
    final_acc1: float
    confusion_matrix: torch.Tensor    # of the best epoch
    classes: list[str]
    history: list[dict]
    train_images: int
    val_images: int


def check_config(cfg: FinetuneConfig) -> None:
    checks = [(cfg.epochs >= 1, "--epochs must be at least 1"),
              (cfg.batch_size >= 1, "--batch-size must be at least 1"),
              (cfg.accum_iter >= 1, "--accum-iter must be at least 1"),
              (cfg.warmup_epochs >= 0, "--warmup-epochs must be >= 0"),
              (0.0 <= cfg.drop_path < 1.0, "--drop-path must be in [0, 1)"),
              (0.0 <= cfg.smoothing < 1.0, "--smoothing must be in [0, 1)"),
              (cfg.eval_every >= 1, "--eval-every must be at least 1"),
              (cfg.layer_decay is None or 0.0 < cfg.layer_decay <= 1.0, "--layer-decay must be in (0, 1]")]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    if cfg.labels_per_class is not None and cfg.label_fraction is not None:
        raise ConfigError("give only one of --labels-per-class and --label-fraction")


def _load_resume(path, model, optimizer, scaler) -> dict:
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(f"--resume {p} does not exist")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read --resume {p}: {str(e).splitlines()[0]}") from None
    if not isinstance(state, dict) or not {"model", "optimizer", "epoch"} <= set(state):
        raise CheckpointError(f"--resume {p} is not a fine-tuning checkpoint (needs model, optimizer, epoch)")
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    except (RuntimeError, ValueError) as e:
        raise CheckpointError(f"--resume {p} does not fit this model: {str(e).splitlines()[0]}") from None
    return state


def _optimizer_step(model, optimizer, scaler, clip_grad) -> None:
    if scaler is not None:
        scaler.unscale_(optimizer)
    if clip_grad:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def finetune(cfg: FinetuneConfig) -> FinetuneResult:
    check_config(cfg)
    device, precision, sp = labelled_run(cfg)
    num_classes = len(sp.classes)
    model, info = build_classifier(num_classes, checkpoint=cfg.checkpoint, model=cfg.model,
                                   from_scratch=cfg.from_scratch, img_size=cfg.img_size,
                                   global_pool=cfg.global_pool, drop_path=cfg.drop_path,
                                   attn=cfg.attn, model_overrides=cfg.model_overrides)
    model.to(device)
    img_size, in_chans = model.img_size[0], model.config["in_chans"]
    if model.img_size[0] != model.img_size[1]:
        raise ConfigError("fine-tuning data loaders make square images; use a square --img-size")
    train_loader, val_loader = make_loaders(sp, img_size=img_size, batch_size=cfg.batch_size,
                                            in_chans=in_chans, cfg=cfg, device=device, seed=cfg.seed)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise DataError(f"{len(sp.train)} training images make no batch")
    eff_batch = min(cfg.batch_size, len(sp.train)) * cfg.accum_iter  # the loader caps the batch
    lr = cfg.lr if cfg.lr is not None else cfg.blr * eff_batch / 256
    layer_decay = cfg.layer_decay or default_layer_decay(model.num_layers)
    groups = param_groups_lrd(model, cfg.weight_decay, model.no_weight_decay(), layer_decay)
    optimizer = adamw(groups, lr, device, betas=BETAS)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None  # fp16 needs CUDA
    mixup = None
    if cfg.mixup > 0 or cfg.cutmix > 0:
        mixup = Mixup(num_classes, cfg.mixup, cfg.cutmix, cfg.mixup_prob, cfg.mixup_switch_prob,
                      cfg.smoothing, seed=cfg.seed)

    out = Path(cfg.output_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    history, best = [], {"acc1": -1.0, "acc5": 0.0, "epoch": -1}
    best_cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    start_epoch = 0
    if cfg.resume:
        state = _load_resume(cfg.resume, model, optimizer, scaler)
        start_epoch = int(state["epoch"]) + 1
        history = list(state.get("history", []))
        best = dict(state.get("best", best))
        if "best_cm" in state:
            best_cm = state["best_cm"]
    meta = {"classes": sp.classes, "classifier_config": model.config, "fastmae_version": __version__,
            "args": cfg.to_dict(), "source": info["source"], "from_scratch": cfg.from_scratch,
            "eval_transform": EvalTransform(img_size, in_chans).describe()}

    progress = Progress(cfg.epochs, "fine-tune", initial=start_epoch, unit="epoch", enabled=cfg.progress)
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        train_loader.set_epoch(epoch)
        t0, total, seen = time.time(), 0.0, 0
        optimizer.zero_grad(set_to_none=True)
        for i, (imgs, labels) in enumerate(train_loader):
            if i % cfg.accum_iter == 0:
                step_lr = lr_at(epoch + i / steps_per_epoch, lr=lr, min_lr=cfg.min_lr,
                                warmup_epochs=cfg.warmup_epochs, epochs=cfg.epochs)
                set_lr(optimizer, step_lr)
            imgs, labels = imgs.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with autocast(device, precision):
                if mixup is not None:
                    imgs, target = mixup(imgs, labels)
                    loss = soft_target_cross_entropy(model(imgs), target)
                else:
                    loss = F.cross_entropy(model(imgs).float(), labels, label_smoothing=cfg.smoothing)
            value = loss.item()
            if not math.isfinite(value):
                raise TrainingError(f"the loss became {value} at epoch {epoch}, step {i}; lower "
                                    "--blr/--lr or use --precision fp32")
            scaled = loss / cfg.accum_iter
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
            if (i + 1) % cfg.accum_iter == 0 or i + 1 == steps_per_epoch:
                _optimizer_step(model, optimizer, scaler, cfg.clip_grad)
                optimizer.zero_grad(set_to_none=True)
            total += value * labels.shape[0]
            seen += labels.shape[0]
        row = {"epoch": epoch, "train_loss": total / max(seen, 1), "lr": step_lr,
               "epoch_s": time.time() - t0}
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            metrics, cm = evaluate(model, val_loader, num_classes, precision, device)
            row.update(val_acc1=metrics["acc1"], val_acc5=metrics["acc5"])
            if metrics["acc1"] > best["acc1"]:
                best = {"acc1": metrics["acc1"], "acc5": metrics["acc5"], "epoch": epoch}
                best_cm = cm
                atomic_torch_save({"model": model.state_dict(), "epoch": epoch, "acc1": metrics["acc1"],
                                   "acc5": metrics["acc5"], **meta}, out / BEST)
        history.append(row)
        atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                           "scaler": scaler.state_dict() if scaler is not None else None,
                           "epoch": epoch, "history": history, "best": best, "best_cm": best_cm,
                           **meta}, out / LAST)
        progress.update()
        figures = {"loss": f"{row['train_loss']:.3f}"}
        if "val_acc1" in row:
            figures["acc1"] = f"{row['val_acc1']:.1f}"
        progress.report(**figures)
    progress.close()

    final_acc1 = next((r["val_acc1"] for r in reversed(history) if "val_acc1" in r), best["acc1"])
    save_confusion_matrix(best_cm, sp.classes, out / "confusion_matrix.png",
                          title=f"best epoch {best['epoch']}")
    evals = [r for r in history if "val_acc1" in r]
    save_curves({"train loss": ([r["epoch"] for r in history], [r["train_loss"] for r in history])},
                out / "loss.png", xlabel="epoch", ylabel="loss", title="fine-tuning loss")
    if evals:
        save_curves({"val top-1": ([r["epoch"] for r in evals], [r["val_acc1"] for r in evals])},
                    out / "accuracy.png", xlabel="epoch", ylabel="top-1 (%)", title="held-out accuracy")
    result = FinetuneResult(out, out / BEST, best["acc1"], best["acc5"], best["epoch"], final_acc1,
                            best_cm, sp.classes, history, len(sp.train), len(sp.val))
    atomic_write_json({"best_acc1": best["acc1"], "best_acc5": best["acc5"], "best_epoch": best["epoch"],
                       "final_acc1": final_acc1, "classes": sp.classes, "train_images": len(sp.train),
                       "labelled_pool": sp.train_pool, "val_images": len(sp.val), "val_from": sp.how,
                       "lr": lr, "effective_batch": eff_batch, "layer_decay": layer_decay,
                       "source": info["source"], "from_scratch": cfg.from_scratch,
                       "confusion_matrix": best_cm.tolist(), "history": history,
                       "config": cfg.to_dict()}, out / "metrics.json")
    return result
