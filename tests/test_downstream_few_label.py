"""The few-label sampler: stratified, seeded, deterministic, never touching held-out images."""
import collections

import pytest

from fastmae.downstream.few_label import holdout_split, sample_few_labels
from fastmae.settings import ConfigError, DataError


def _labels(counts):
    out = []
    for y, n in enumerate(counts):
        out += [y] * n
    import random
    random.Random(7).shuffle(out)
    return out


def test_labels_per_class_is_stratified_and_deterministic():
    labels = _labels([30, 12, 50, 7])
    a = sample_few_labels(labels, labels_per_class=5, seed=3)
    b = sample_few_labels(labels, labels_per_class=5, seed=3)
    c = sample_few_labels(labels, labels_per_class=5, seed=4)
    assert a == b and a != c
    assert collections.Counter(labels[i] for i in a) == {0: 5, 1: 5, 2: 5, 3: 5}
    assert len(set(a)) == len(a) == 20 and a == sorted(a)


def test_label_fraction_per_class():
    labels = _labels([40, 10, 3])
    idx = sample_few_labels(labels, label_fraction=0.1, seed=0)
    assert collections.Counter(labels[i] for i in idx) == {0: 4, 1: 1, 2: 1}  # at least one each


def test_disjoint_from_holdout():
    labels = _labels([20, 20, 20])
    train, held = holdout_split(labels, 0.25, seed=1)
    assert not set(train) & set(held) and sorted(train + held) == list(range(60))
    assert collections.Counter(labels[i] for i in held) == {0: 5, 1: 5, 2: 5}
    few = sample_few_labels(labels, labels_per_class=15, seed=2, exclude=held)
    assert not set(few) & set(held)
    assert collections.Counter(labels[i] for i in few) == {0: 15, 1: 15, 2: 15}
    # only 15 per class remain outside the held-out split: asking for 16 must fail
    with pytest.raises(DataError, match="fewer than --labels-per-class 16"):
        sample_few_labels(labels, labels_per_class=16, seed=2, exclude=held)
    assert holdout_split(labels, 0.25, seed=1) == (train, held)


def test_bad_requests():
    labels = [0, 1, 0, 1]
    with pytest.raises(ConfigError, match="exactly one"):
        sample_few_labels(labels, labels_per_class=1, label_fraction=0.5)
    with pytest.raises(ConfigError, match="exactly one"):
        sample_few_labels(labels)
    with pytest.raises(ConfigError, match="at least 1"):
        sample_few_labels(labels, labels_per_class=0)
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        sample_few_labels(labels, label_fraction=1.5)
    with pytest.raises(DataError, match="class 'cat' has only 2"):
        sample_few_labels(labels, labels_per_class=3, classes=["cat", "dog"])
    with pytest.raises(DataError, match="labelled"):
        sample_few_labels(None, labels_per_class=1)
    with pytest.raises(DataError, match="hold any out"):
        holdout_split([0, 1, 2], 0.5)
