"""Trained classifiers for the deploy tests: real `fastmae finetune` / `fastmae linprobe`
runs on a tiny model, and copies of their checkpoints with fresh random weights (so logits
are of order one and a wrong conversion cannot hide behind a near-uniform head)."""
from pathlib import Path

import torch

from fastmae.cli import main

from .downstream_helpers import save_checkpoint, split_folder, tiny_mae

FAST = ["--loader", "torch", "--num-workers", "0", "--device", "cpu"]
# name -> (command, extra flags, checkpoint file); the pools the exporters must cover
RUNS = {"avg": ("finetune", [], "checkpoint-best.pth"),
        "token": ("finetune", ["--cls-token"], "checkpoint-best.pth"),
        "probe-cls": ("linprobe", [], "probe-best.pth"),
        "probe-avg": ("linprobe", ["--global-pool"], "probe-best.pth")}


def train_runs(root: Path, names=tuple(RUNS)) -> dict:
    """name -> checkpoint path, each from a one-epoch CLI run on 3 colour classes."""
    root = Path(root)
    mae = save_checkpoint(tiny_mae(), root / "mae.pth")
    data = split_folder(root / "data", train=4, val=2)
    out = {}
    for name in names:
        cmd, extra, file = RUNS[name]
        assert main([cmd, "--checkpoint", str(mae), "--data", str(data), "--epochs", "1", "--batch-size", "6",
                     "--output-dir", str(root / name), *extra, *FAST]) == 0
        out[name] = root / name / file
    return out


def randomised(path: Path, out: Path, seed: int) -> Path:
    """The checkpoint with every weight redrawn (LayerNorm scales near 1, running variances
    positive), its metadata kept."""
    raw = torch.load(path, map_location="cpu", weights_only=True)
    g = torch.Generator().manual_seed(seed)
    key = "model" if "model" in raw else "head"
    sd = {}
    for k, v in raw[key].items():
        if not v.is_floating_point():
            sd[k] = v
        elif k.endswith("running_var"):
            sd[k] = torch.rand(v.shape, generator=g) + 0.5
        elif "norm" in k and k.endswith("weight"):
            sd[k] = 1 + 0.2 * torch.randn(v.shape, generator=g)
        else:
            sd[k] = 0.3 * torch.randn(v.shape, generator=g)
    raw[key] = sd
    torch.save(raw, out)
    return out
