"""Which labelled images a few-label run may use: a stratified, seeded choice of N per
class (or a fraction F of each class), and a stratified held-out split for evaluation
when no separate validation set is given. Both are pure functions of (labels, seed), so
a run can be repeated, and the chosen training images never overlap the held-out ones."""
import math
import random
from collections import defaultdict

from ..settings import ConfigError, DataError


def _by_class(labels, exclude=()) -> dict[int, list[int]]:
    excluded = set(exclude)
    groups: dict[int, list[int]] = defaultdict(list)
    for i, y in enumerate(labels):
        if i not in excluded:
            groups[int(y)].append(i)
    return dict(sorted(groups.items()))


def sample_few_labels(labels, *, labels_per_class: int | None = None,
                      label_fraction: float | None = None, seed: int = 0,
                      exclude=(), classes=None) -> list[int]:
    """Indices into `labels` of the labelled training subset, sorted.

    labels_per_class=N takes N images of every class; label_fraction=F takes
    max(1, round(F * n_c)) of a class with n_c images. Indices in `exclude` (the held-out
    split) are never chosen. A class with fewer than N images is an error, not a silent
    imbalance."""
    if (labels_per_class is None) == (label_fraction is None):
        raise ConfigError("give exactly one of --labels-per-class and --label-fraction")
    if labels_per_class is not None and labels_per_class < 1:
        raise ConfigError(f"--labels-per-class must be at least 1, got {labels_per_class}")
    if label_fraction is not None and not 0.0 < label_fraction <= 1.0:
        raise ConfigError(f"--label-fraction must be in (0, 1], got {label_fraction}")
    if labels is None or len(labels) == 0:
        raise DataError("few-label sampling needs labelled images (an ImageFolder layout "
                        "root/<class>/<image> or a file list with labels)")
    rng = random.Random(seed)
    chosen = []
    for y, idx in _by_class(labels, exclude).items():
        if labels_per_class is not None:
            n = labels_per_class
            if len(idx) < n:
                name = classes[y] if classes is not None and y < len(classes) else y
                raise DataError(f"class {name!r} has only {len(idx)} training images, fewer "
                                f"than --labels-per-class {n}")
        else:
            n = max(1, int(round(label_fraction * len(idx))))
        chosen += rng.sample(idx, n)
    return sorted(chosen)


def holdout_split(labels, fraction: float = 0.2, seed: int = 0) -> tuple[list[int], list[int]]:
    """Stratified (train, held_out) index lists: ceil(fraction * n_c) of each class with at
    least two images is held out."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"held-out fraction must be in (0, 1), got {fraction}")
    if labels is None or len(labels) == 0:
        raise DataError("a held-out split needs labelled images")
    rng = random.Random(seed + 1_000_003)  # independent of the few-label draw
    train, held = [], []
    for _, idx in _by_class(labels).items():
        idx = list(idx)
        rng.shuffle(idx)
        k = math.ceil(fraction * len(idx)) if len(idx) > 1 else 0
        held += idx[:k]
        train += idx[k:]
    if not held:
        raise DataError("too few labelled images to hold any out for evaluation; give --val")
    return sorted(train), sorted(held)
