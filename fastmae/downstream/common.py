"""What every labelled run (finetune, linprobe, knn) shares: its device and precision, the
seeded train/eval split, the two loaders, and the evaluation pass."""
import torch

from .. import data
from ..settings import autocast, resolve_device, resolve_precision
from . import splits as splits_mod
from .metrics import Evaluation


def labelled_run(cfg):
    """Device, resolved precision (settings.resolve_precision), and the train/eval split of
    the labelled data; seeds torch's RNG."""
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    torch.manual_seed(cfg.seed)
    sp = splits_mod.resolve(cfg.data, cfg.val, labels_per_class=cfg.labels_per_class,
                            label_fraction=cfg.label_fraction,
                            holdout_fraction=cfg.holdout_fraction, seed=cfg.seed)
    return device, precision, sp


def make_loaders(sp, *, img_size, batch_size, in_chans, cfg, device, seed):
    """(train loader: augmented, shuffled, full batches; eval loader: in file order)."""
    bs = min(batch_size, len(sp.train))
    train = data.classification_loader(sp.train, train=True, img_size=img_size, batch_size=bs,
                                       backend=cfg.loader, device=device,
                                       num_workers=cfg.num_workers, seed=seed, in_chans=in_chans,
                                       drop_last=True)
    val = data.classification_loader(sp.val, train=False, img_size=img_size,
                                     batch_size=max(batch_size, 1), backend=cfg.loader,
                                     device=device, num_workers=cfg.num_workers, seed=seed,
                                     in_chans=in_chans, drop_last=False)
    return train, val


@torch.no_grad()
def evaluate(model, loader, num_classes: int, precision: str, device) -> tuple[dict, torch.Tensor]:
    model.eval()
    ev = Evaluation(num_classes)
    for imgs, labels in loader:
        with autocast(device, precision):
            scores = model(imgs.to(device, non_blocking=True))
        ev.update(scores, labels)
    return ev.result(), ev.cm
