"""Training checkpoints: the official MAE format ({'model', 'optimizer', 'epoch',
'scaler', 'args'}, readable by the official fine-tuning scripts) plus what an exact
resume needs (step, data position, RNG states).

Files are written atomically (temp file, fsync, rename), so a kill at any moment
leaves either the old or the new checkpoint, never half of one. They are loaded
with weights_only=True: a checkpoint can never execute code."""
import os
import random
import re
from pathlib import Path

import numpy as np
import torch

from ..settings import CheckpointError
from ..files import atomic_torch_save

LAST = "checkpoint-last.pth"
_STEP_FILE = re.compile(r"^checkpoint-(\d+)\.pth$")
REQUIRED = ("model", "optimizer", "epoch", "step", "data_position", "rng")


def step_file(output_dir: Path, step: int) -> Path:
    return Path(output_dir) / f"checkpoint-{step:07d}.pth"


def rng_state(noise_generator: torch.Generator) -> dict:
    """Every RNG the loop draws from, in types that weights_only loading accepts."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "noise": noise_generator.get_state(),
             "numpy": (torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict, noise_generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    noise_generator.set_state(state["noise"])
    keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(state: dict, output_dir: Path, keep_last: int) -> Path:
    """Write checkpoint-<step>.pth, point checkpoint-last.pth at it (hard link, atomically
    replaced), and delete numbered checkpoints beyond the newest keep_last."""
    output_dir = Path(output_dir)
    path = step_file(output_dir, state["step"])
    atomic_torch_save(state, path)
    tmp_link = output_dir / f".{LAST}.tmp-{os.getpid()}"
    tmp_link.unlink(missing_ok=True)
    os.link(path, tmp_link)
    os.replace(tmp_link, output_dir / LAST)
    for old in numbered(output_dir)[:-keep_last] if keep_last > 0 else []:
        old.unlink(missing_ok=True)
    return path


def numbered(output_dir: Path) -> list[Path]:
    """Numbered checkpoints in the folder, oldest first."""
    found = [p for p in Path(output_dir).glob("checkpoint-*.pth") if _STEP_FILE.match(p.name)]
    return sorted(found, key=lambda p: int(_STEP_FILE.match(p.name).group(1)))


def load(path: Path) -> dict:
    """Load and sanity-check a training checkpoint; CheckpointError if unusable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, garbage bytes, or a pickle that is not plain data
        raise CheckpointError(f"checkpoint {path} cannot be read safely ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:160]})") from None
    missing = [k for k in REQUIRED if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is not a resumable fastmae training checkpoint "
                              f"(missing {', '.join(missing)})")
    return state


def latest_good(output_dir: Path, log=print) -> tuple[Path, dict] | None:
    """The newest checkpoint in output_dir that loads; corrupt ones are reported and skipped."""
    for path in reversed(numbered(output_dir)):
        try:
            return path, load(path)
        except CheckpointError as e:
            log(f"warning: skipping unusable checkpoint: {e}")
    return None
