"""Linear probing, the paper's protocol (official main_linprobe.py): the pretrained encoder
is frozen, a BatchNorm1d(affine=False) + Linear head is trained on its cls-token (or
patch-mean) features with LARS, lr = blr * batch / 256, warmup + cosine, no weight decay.

--cache-features trades the per-epoch augmentation for speed: the features of every
training image are computed once (evaluation transform) and the head trains on them."""
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import __version__, data
from ..data.transforms import EvalTransform
from ..files import atomic_torch_save, atomic_write_json
from ..pictures import save_confusion_matrix
from ..progress import Progress
from ..settings import ConfigError, DataError, TrainingError, autocast
from ..train.schedule import lr_at, set_lr
from .common import labelled_run, make_loaders
from .features import extract, frozen_encoder
from .lars import LARS
from .metrics import Evaluation

OPTIMIZERS = ("lars", "sgd", "adamw")


@dataclass
class LinprobeConfig:
    checkpoint: str | None = None
    data: str | None = None
    val: str | None = None
    holdout_fraction: float = 0.2
    labels_per_class: int | None = None
    label_fraction: float | None = None
    img_size: int | None = None
    pool: str = "cls"                 # cls | avg
    epochs: int = 90
    batch_size: int = 512
    blr: float = 0.1
    lr: float | None = None
    min_lr: float = 0.0
    warmup_epochs: float = 10
    weight_decay: float = 0.0
    optimizer: str = "lars"
    cache_features: bool = False
    loader: str = "auto"
    num_workers: int | None = None
    device: str = "auto"
    precision: str | None = None
    attn: str = "auto"
    seed: int = 0
    output_dir: str = "./output_linprobe"
    progress: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def probe_head(dim: int, num_classes: int) -> nn.Sequential:
    head = nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), nn.Linear(dim, num_classes))
    nn.init.trunc_normal_(head[1].weight, std=0.01)
    nn.init.zeros_(head[1].bias)
    return head


def build_optimizer(name: str, params, lr: float, weight_decay: float):
    if name == "lars":
        return LARS(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ConfigError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def _cached_batches(feats: torch.Tensor, labels: torch.Tensor, batch: int, epoch: int, seed: int):
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(feats.shape[0], generator=g)
    for start in range(0, feats.shape[0] - batch + 1, batch):  # full batches, as drop_last
        idx = order[start:start + batch]
        yield feats[idx], labels[idx]


@torch.no_grad()
def _features(encoder, imgs, pool, precision):
    with autocast(imgs.device, precision):
        return encoder.features(imgs, pool).float()


def linprobe(cfg: LinprobeConfig) -> dict:
    if cfg.checkpoint is None:
        raise ConfigError("linear probing needs --checkpoint (a pretrained MAE)")
    if cfg.pool not in ("cls", "avg"):
        raise ConfigError(f"unknown pooling {cfg.pool!r}; choose cls or avg")
    if cfg.epochs < 1 or cfg.batch_size < 2:
        raise ConfigError("--epochs must be >= 1 and --batch-size >= 2 (BatchNorm needs a batch)")
    device, precision, sp = labelled_run(cfg)
    if len(sp.train) < 2:
        raise DataError("linear probing needs at least 2 labelled training images")
    num_classes = len(sp.classes)
    encoder = frozen_encoder(cfg.checkpoint, cfg.img_size, cfg.attn).to(device)
    head = probe_head(encoder.embed_dim, num_classes).to(device)
    train_loader, val_loader = make_loaders(sp, img_size=encoder.img_size[0], batch_size=cfg.batch_size,
                                            in_chans=encoder.config["in_chans"], cfg=cfg,
                                            device=device, seed=cfg.seed)
    batch = min(cfg.batch_size, len(sp.train))
    lr = cfg.lr if cfg.lr is not None else cfg.blr * batch / 256
    optimizer = build_optimizer(cfg.optimizer, head.parameters(), lr, cfg.weight_decay)
    val_feats, val_labels = extract(encoder, val_loader, cfg.pool, device, precision)
    if cfg.cache_features:
        plain = data.classification_loader(sp.train, train=False, img_size=encoder.img_size[0],
                                           batch_size=cfg.batch_size, backend=cfg.loader,
                                           device=device, num_workers=cfg.num_workers,
                                           seed=cfg.seed, in_chans=encoder.config["in_chans"],
                                           drop_last=False)
        train_feats, train_labels = extract(encoder, plain, cfg.pool, device, precision)
        steps = len(sp.train) // batch
    else:
        steps = len(train_loader)

    out = Path(cfg.output_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    history, best, best_cm = [], {"acc1": -1.0, "acc5": 0.0, "epoch": -1}, None
    progress = Progress(cfg.epochs, "linear probe", unit="epoch", enabled=cfg.progress)
    for epoch in range(cfg.epochs):
        head.train()
        if cfg.cache_features:
            batches = _cached_batches(train_feats, train_labels, batch, epoch, cfg.seed)
        else:
            train_loader.set_epoch(epoch)
            batches = ((_features(encoder, x.to(device), cfg.pool, precision), y) for x, y in train_loader)
        total, seen = 0.0, 0
        for i, (f, y) in enumerate(batches):
            set_lr(optimizer, lr_at(epoch + i / max(steps, 1), lr=lr, min_lr=cfg.min_lr,
                                    warmup_epochs=cfg.warmup_epochs, epochs=cfg.epochs))
            f, y = f.to(device), y.to(device)
            loss = F.cross_entropy(head(f), y)
            if not math.isfinite(loss.item()):
                raise TrainingError(f"the probe loss became {loss.item()} at epoch {epoch}; lower --blr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * y.shape[0]
            seen += y.shape[0]
        head.eval()
        ev = Evaluation(num_classes)
        with torch.no_grad():
            ev.update(head(val_feats.to(device)), val_labels)
        m = ev.result()
        history.append({"epoch": epoch, "train_loss": total / max(seen, 1), "val_acc1": m["acc1"],
                        "val_acc5": m["acc5"]})
        if m["acc1"] > best["acc1"]:
            best, best_cm = {"acc1": m["acc1"], "acc5": m["acc5"], "epoch": epoch}, ev.cm
            atomic_torch_save({"head": head.state_dict(), "pool": cfg.pool, "classes": sp.classes,
                               "checkpoint": str(cfg.checkpoint), "encoder_config": encoder.config,
                               "epoch": epoch, "acc1": m["acc1"], "fastmae_version": __version__,
                               "eval_transform": EvalTransform(encoder.img_size[0],
                                                               encoder.config["in_chans"]).describe()},
                              out / "probe-best.pth")
        progress.update()
        progress.report(loss=f"{history[-1]['train_loss']:.3f}", acc1=f"{m['acc1']:.1f}")
    progress.close()
    save_confusion_matrix(best_cm, sp.classes, out / "confusion_matrix.png",
                          title=f"linear probe, best epoch {best['epoch']}")
    result = {"best_acc1": best["acc1"], "best_acc5": best["acc5"], "best_epoch": best["epoch"],
              "final_acc1": history[-1]["val_acc1"], "classes": sp.classes, "pool": cfg.pool,
              "train_images": len(sp.train), "val_images": len(sp.val), "val_from": sp.how, "lr": lr,
              "confusion_matrix": best_cm.tolist(), "history": history, "config": cfg.to_dict()}
    atomic_write_json(result, out / "metrics.json")
    return result
