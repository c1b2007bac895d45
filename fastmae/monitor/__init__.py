"""Monitoring in operation with a pretrained MAE: anomaly scores and heatmaps (complementary-
mask reconstruction error and feature novelty against a reference set), thresholds calibrated
at a false-positive rate, drift tests on the embeddings, and self-contained HTML reports."""
from .masks import ComplementaryMasks, complementary_masks
from .reference import Reference
from .scorer import COMPONENTS, Scorer, ScoreResult

__all__ = ["Scorer", "ScoreResult", "Reference", "COMPONENTS", "complementary_masks",
           "ComplementaryMasks"]
