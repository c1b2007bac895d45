"""k-nearest-neighbour classification on frozen features, as DINO evaluates: cosine
similarity of L2-normalised features, the k most similar training images vote for their
class with weight exp(similarity / T)."""
import torch
import torch.nn.functional as F

from ..settings import ConfigError, DataError
from .metrics import Evaluation


@torch.no_grad()
def knn_scores(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
               num_classes: int, k: int = 20, temperature: float = 0.07,
               chunk: int = 1024) -> torch.Tensor:
    """(N_test, num_classes) vote totals; argmax is the prediction."""
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")
    if temperature <= 0:
        raise ConfigError(f"temperature must be positive, got {temperature}")
    if train_feats.shape[0] == 0:
        raise DataError("k-NN needs at least one training feature")
    if train_feats.shape[1] != test_feats.shape[1]:
        raise ConfigError(f"train features have {train_feats.shape[1]} dims, test features "
                          f"{test_feats.shape[1]}")
    train = F.normalize(train_feats.float(), dim=1)
    labels = train_labels.to(train.device).long()
    k = min(k, train.shape[0])
    out = []
    for start in range(0, test_feats.shape[0], chunk):
        q = F.normalize(test_feats[start:start + chunk].float().to(train.device), dim=1)
        sim, idx = (q @ train.T).topk(k, dim=1)
        weights = (sim / temperature).exp()
        votes = torch.zeros(q.shape[0], num_classes, device=train.device)
        votes.scatter_add_(1, labels[idx], weights)
        out.append(votes)
    return torch.cat(out) if out else torch.zeros(0, num_classes)


def knn_evaluate(train_feats, train_labels, test_feats, test_labels, num_classes: int,
                 k: int = 20, temperature: float = 0.07) -> tuple[dict, torch.Tensor]:
    """({'acc1', 'acc5', 'n'}, confusion matrix) of k-NN on the test features."""
    scores = knn_scores(train_feats, train_labels, test_feats, num_classes, k, temperature)
    ev = Evaluation(num_classes)
    ev.update(scores, test_labels)
    return ev.result(), ev.cm


def knn_run(checkpoint, *, data=None, val=None, holdout_fraction: float = 0.2,
            labels_per_class=None, label_fraction=None, k: int = 20, temperature: float = 0.07,
            pool: str = "cls", img_size=None, batch_size: int = 256, loader: str = "auto",
            num_workers=None, device: str = "auto", precision=None, attn: str = "auto",
            seed: int = 0) -> tuple[dict, torch.Tensor, list[str]]:
    """k-NN accuracy of a checkpoint's frozen features on held-out images:
    (metrics, confusion matrix, classes)."""
    from .. import data as fdata
    from ..settings import resolve_device, resolve_precision
    from . import splits as splits_mod
    from .features import extract, frozen_encoder

    if pool not in ("cls", "avg"):
        raise ConfigError(f"unknown pooling {pool!r}; choose cls or avg")
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev)
    sp = splits_mod.resolve(data, val, labels_per_class=labels_per_class,
                            label_fraction=label_fraction, holdout_fraction=holdout_fraction, seed=seed)
    encoder = frozen_encoder(checkpoint, img_size, attn).to(dev)
    feats = {}
    for name, samples in (("train", sp.train), ("val", sp.val)):
        ld = fdata.classification_loader(samples, train=False, img_size=encoder.img_size[0],
                                         batch_size=batch_size, backend=loader, device=dev,
                                         num_workers=num_workers, seed=seed,
                                         in_chans=encoder.config["in_chans"], drop_last=False)
        feats[name] = extract(encoder, ld, pool, dev, precision)
    metrics, cm = knn_evaluate(feats["train"][0], feats["train"][1], feats["val"][0], feats["val"][1],
                               len(sp.classes), k, temperature)
    metrics.update(k=min(k, len(sp.train)), temperature=temperature, pool=pool,
                   train_images=len(sp.train), val_images=len(sp.val), val_from=sp.how)
    return metrics, cm, sp.classes
