"""The labelled train and evaluation sets of a downstream run.

--data DIR with train/ and val/ sub-folders uses them; --data DIR plus --val PATH uses
both; --data DIR alone holds out a stratified, seeded share of DIR for evaluation; no
--data uses the built-in dataset's train and val splits. Evaluation images never appear
in training."""
import os
from dataclasses import dataclass
from pathlib import Path

from .. import data
from ..data import Samples
from ..settings import DataError
from .few_label import holdout_split, sample_few_labels


@dataclass
class Splits:
    train: Samples         # the labelled training images (after few-label sampling)
    val: Samples
    classes: list[str]
    train_pool: int        # labelled training images before few-label sampling
    how: str               # where the evaluation split came from, in words


def _labelled(samples: Samples, where) -> Samples:
    if samples.labels is None:
        raise DataError(f"{where} has no labels: use an ImageFolder layout root/<class>/<image> "
                        "or a file list with a label after each path")
    return samples


def _align(val: Samples, classes: list[str], where) -> Samples:
    """Re-index val's labels by class name onto the training classes."""
    if val.classes == classes:
        return val
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({val.classes[y] for y in val.labels if val.classes[y] not in index})
    if unknown:
        raise DataError(f"{where} has classes the training data lacks: {', '.join(unknown[:5])}")
    return Samples(val.paths, [index[val.classes[y]] for y in val.labels], classes)


def resolve(data_dir=None, val=None, *, labels_per_class=None, label_fraction=None,
            holdout_fraction: float = 0.2, seed: int = 0) -> Splits:
    if data_dir is None:
        train = data.scan(data.builtin_dataset("train"))
        val_s = data.scan(val) if val is not None else data.scan(data.builtin_dataset("val"))
        how = "built-in dataset, val split" if val is None else f"--val {val}"
    else:
        root = Path(data_dir).expanduser()
        if (root / "train").is_dir() and (root / "val").is_dir():
            train = data.scan(root / "train")
            val_s = data.scan(root / "val" if val is None else val)
            how = str(root / "val") if val is None else f"--val {val}"
        elif val is not None:
            train, val_s = data.scan(root), data.scan(val)
            how = f"--val {val}"
        else:
            full = _labelled(data.scan(root), root)
            tr_idx, va_idx = holdout_split(full.labels, holdout_fraction, seed)
            train, val_s = full.subset(tr_idx), full.subset(va_idx)
            how = f"{holdout_fraction:.0%} of each class of {root} held out (seed {seed})"
    train = _labelled(train, "the training data")
    val_s = _align(_labelled(val_s, "the evaluation data"), train.classes, "the evaluation data")
    overlap = {os.path.realpath(p) for p in train.paths} & {os.path.realpath(p) for p in val_s.paths}
    if overlap:
        raise DataError(f"{len(overlap)} evaluation images are also training images "
                        f"(e.g. {sorted(overlap)[0]}); evaluation must use held-out images")
    pool = len(train)
    if labels_per_class is not None or label_fraction is not None:
        idx = sample_few_labels(train.labels, labels_per_class=labels_per_class,
                                label_fraction=label_fraction, seed=seed, classes=train.classes)
        train = train.subset(idx)
    return Splits(train, val_s, list(train.classes), pool, how)
