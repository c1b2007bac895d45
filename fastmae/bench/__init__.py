"""Benchmarks of the MAE pretraining step: fastmae against the plain PyTorch reference
and Hugging Face ViTMAE, with a counted FLOP model for MFU."""
from ..perf.flops import forward_flops, named_config, train_flops_per_image
from .harness import BenchConfig, run

__all__ = ["BenchConfig", "run", "forward_flops", "train_flops_per_image", "named_config"]
