"""torch.compile of an MAE, two ways: the whole model as one graph (inductor fuses across
block boundaries, and AOTAutograd compiles the backward with it), or each transformer
block on its own (small graphs that compile fast; every block reuses the first one's code).
Which one runs faster is a question for the benchmark (`fastmae bench` times both)."""
import torch
import torch.nn as nn

from ..settings import ConfigError, check_choice


def compile_enabled(setting: str, device: torch.device) -> bool:
    """The --compile setting for a run on `device`: auto compiles on CUDA only (on the CPU
    the compile time is rarely won back)."""
    check_choice("compile", setting)
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def compile_model(model: nn.Module, mode: str = "model", call: nn.Module | None = None, **options):
    """The callable that runs `call` (default `model`; a DDP wrapper of it, say) compiled.

    mode "model": torch.compile(call). mode "blocks": every encoder and decoder block's
    forward_split (what run_blocks calls) compiled on its own, `call` returned as is."""
    check_choice("compile_mode", mode)
    call = model if call is None else call
    if mode == "model":
        return torch.compile(call, **options)
    blocks = list(getattr(model, "blocks", [])) + list(getattr(model, "decoder_blocks", []))
    if not blocks:
        raise ConfigError(f"--compile-mode blocks: {type(model).__name__} has no transformer blocks")
    for blk in blocks:
        if "forward_split" in vars(blk):
            continue  # compiled already (a scorer given a model that was compiled for training)
        # An instance attribute shadows the method: run_blocks calls blk.forward_split.
        blk.forward_split = torch.compile(blk.forward_split, **options)
    return call
