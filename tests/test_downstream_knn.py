"""Weighted k-NN (DINO's protocol) on features with a known answer."""
import math

import pytest
import torch

from fastmae.downstream.knn import knn_evaluate, knn_scores
from fastmae.downstream.metrics import confusion_matrix, topk_correct
from fastmae.settings import ConfigError


def test_separable_clusters_are_classified_perfectly():
    centres = torch.randn(4, 16) * 5
    train_y = torch.arange(4).repeat_interleave(25)
    train = centres[train_y] + 0.3 * torch.randn(100, 16)
    test_y = torch.arange(4).repeat(10)
    test = centres[test_y] + 0.3 * torch.randn(40, 16)
    metrics, cm = knn_evaluate(train, train_y, test, test_y, 4, k=20, temperature=0.07)
    assert metrics["acc1"] == 100.0 and metrics["n"] == 40
    assert torch.equal(cm, torch.diag(torch.full((4,), 10)))


def test_weighted_votes_by_hand():
    # Query along x: neighbours at cos 1.0 (class 0), 0.8 (class 1), 0.6 (class 1).
    train = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 2])
    scores = knn_scores(train, labels, torch.tensor([[2.0, 0.0]]), 3, k=3, temperature=0.5)
    expect = torch.tensor([[math.exp(2.0), math.exp(1.6) + math.exp(1.2), 0.0]])
    torch.testing.assert_close(scores, expect, rtol=1e-6, atol=0)
    # a high temperature flattens the weights: two votes of class 1 beat one of class 0
    scores = knn_scores(train, labels, torch.tensor([[2.0, 0.0]]), 3, k=3, temperature=100.0)
    assert scores.argmax().item() == 1


def test_k_larger_than_train_set_is_capped():
    scores = knn_scores(torch.randn(3, 4), torch.tensor([0, 1, 1]), torch.randn(5, 4), 2, k=20)
    assert scores.shape == (5, 2) and torch.isfinite(scores).all()


def test_topk_and_confusion():
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.1, 0.4], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 0])
    assert topk_correct(scores, labels, (1, 2, 5)) == {1: 1, 2: 2, 5: 3}
    cm = confusion_matrix(scores.argmax(1), labels, 3)
    assert cm.tolist() == [[0, 0, 1], [0, 1, 0], [1, 0, 0]]


def test_bad_arguments():
    f, y = torch.randn(3, 4), torch.tensor([0, 1, 1])
    with pytest.raises(ConfigError, match="k must be"):
        knn_scores(f, y, f, 2, k=0)
    with pytest.raises(ConfigError, match="temperature"):
        knn_scores(f, y, f, 2, temperature=0)
    with pytest.raises(ConfigError, match="dims"):
        knn_scores(f, y, torch.randn(2, 5), 2)
