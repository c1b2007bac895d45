"""Loading and saving MAE weights without ever running pickled code.

Reads fastmae training checkpoints ({'model': sd, 'model_config': ...}), the official
MAE .pth files ({'model': sd}, full or encoder-only, `args` as an argparse.Namespace),
bare state dicts, .safetensors files (config in the "fastmae_model_config" metadata),
and Hugging Face ViTMAE weights (a model.safetensors / pytorch_model.bin, or the folder
holding it with its config.json). PyTorch files go through torch.load(weights_only=True):
a pickle that names anything but tensors and plain data is refused, not executed."""
import argparse
import json
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from ..settings import CheckpointError, ConfigError
from ..files import atomic_save_file
from ..models.mae import MaskedAutoencoderViT, to_pair
from ..models.pos_embed import interpolate_pos_embed
from . import hf
from .statedict import infer_model_config, load_weights
from .weights import Checkpoint

CONFIG_KEY = "fastmae_model_config"
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]


def _is_safetensors(path: Path) -> bool:
    """safetensors files start with an 8-byte header length and a JSON header."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # the Rust reader raises its own SafetensorError for any bad byte
        raise CheckpointError(f"{path} is a corrupt or truncated safetensors file ({_first_line(e)})") from e
    return tensors, meta


def _read_torch(path: Path):
    try:
        # The official scripts store their flags as an argparse.Namespace: plain data.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" in str(e).lower():
            why = next((ln.strip() for ln in str(e).splitlines()
                        if "GLOBAL" in ln or "Unsupported" in ln), _first_line(e))
            why = why.split(". ")[0].rstrip(".")  # drop torch's advice on allowlisting
            raise CheckpointError(f"refusing to load {path}: it holds pickled objects other than "
                                  f"tensors and plain data, which could run code on load ({why})") from None
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({_first_line(e)})") from e
    except Exception as e:
        raise CheckpointError(f"{path} is corrupt, truncated or not a PyTorch checkpoint "
                              f"({_first_line(e)})") from e


def _tensor_dict(obj, path, what: str) -> dict:
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path}: {what} is not a non-empty dict of tensors")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: {what} has entries that are not tensors: {', '.join(bad[:8])}")
    return dict(obj)


def _hf_config_beside(path: Path) -> dict | None:
    cfg_path = path.parent / "config.json" if path.is_file() else path / "config.json"
    if not cfg_path.is_file():
        return None
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{cfg_path} is not readable JSON ({_first_line(e)})") from e
    if cfg.get("model_type") != "vit_mae":
        return None
    try:
        return hf.model_config_from_hf(cfg)
    except ConfigError as e:
        raise CheckpointError(f"{cfg_path}: {e}") from None


def _normalise(state_dict: dict, path) -> tuple[dict, bool]:
    """Strip a DistributedDataParallel 'module.' prefix; translate Hugging Face names."""
    if all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    if hf.is_hf_state_dict(state_dict):
        return hf.hf_to_official(state_dict), True
    return state_dict, False


def load_checkpoint(path) -> Checkpoint:
    """Read any supported weights file (see the module doc). Raises CheckpointError naming
    the path and the problem for a missing, corrupt, unsafe or weightless file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        found = [path / n for n in HF_WEIGHT_FILES if (path / n).is_file()]
        if not found:
            raise CheckpointError(f"{path} is a folder with no {' or '.join(HF_WEIGHT_FILES)} in it")
        return load_checkpoint(found[0])
    if _is_safetensors(path):
        tensors, meta = _read_safetensors(path)
        sd = _tensor_dict(tensors, path, "the safetensors file")
        config = None
        if CONFIG_KEY in meta:
            try:
                config = json.loads(meta[CONFIG_KEY])
            except ValueError as e:
                raise CheckpointError(f"{path}: metadata {CONFIG_KEY} is not valid JSON ({e})") from None
            if not isinstance(config, dict):
                raise CheckpointError(f"{path}: metadata {CONFIG_KEY} is not a JSON object")
        raw, kind = {"metadata": meta}, "safetensors"
    else:
        raw = _read_torch(path)
        if isinstance(raw, Mapping) and ("model" in raw or "state_dict" in raw):
            key = "model" if "model" in raw else "state_dict"
            sd = _tensor_dict(raw[key], path, f"its {key!r} entry")
            config = raw.get("model_config")
            if config is not None and not isinstance(config, Mapping):
                raise CheckpointError(f"{path}: model_config is a {type(config).__name__}, not a dict")
            kind = "fastmae" if ("model_config" in raw or "fastmae_version" in raw) else \
                ("official" if key == "model" else "state_dict")
        elif isinstance(raw, Mapping) and raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
            sd, config, kind = _tensor_dict(raw, path, "the file"), None, "state_dict"
        else:
            what = f"a dict with keys {', '.join(map(str, list(raw)[:8]))}" if isinstance(raw, Mapping) \
                else f"a {type(raw).__name__}"
            raise CheckpointError(f"{path} holds no model weights: expected {{'model': state_dict}}, a "
                                  f"state dict of tensors or a safetensors file, found {what}")
        raw = dict(raw)
    sd, from_hf = _normalise(sd, path)
    if from_hf:
        kind = "hf"
        if config is None:
            config = _hf_config_beside(path)
    return Checkpoint(state_dict=sd, model_config=dict(config) if config else None, raw=raw,
                      path=str(path), kind=kind)


def _fit_grid(sd: dict, cfg_source: dict | None, model: MaskedAutoencoderViT) -> dict:
    """Bicubic-resize position embeddings to the model's patch grid when img_size was
    overridden (as the official fine-tuning code does)."""
    out = dict(sd)
    for key in ("pos_embed", "decoder_pos_embed"):
        if key not in sd or sd[key].shape[1] - 1 == model.num_patches:
            continue
        n = sd[key].shape[1] - 1
        if cfg_source and "img_size" in cfg_source:
            h, w = to_pair(cfg_source["img_size"])
            old = (h // model.patch_size, w // model.patch_size)
        else:
            side = int(round(n ** 0.5))
            old = (side, side)
        if old[0] * old[1] != n:
            raise CheckpointError(f"{key} holds {n} patches, which is no {old[0]}x{old[1]} grid")
        out[key] = interpolate_pos_embed(sd[key], old, model.grid_size)
    return out


def model_from_checkpoint(path_or_checkpoint, **overrides) -> MaskedAutoencoderViT:
    """A fastmae.MaskedAutoencoderViT holding the checkpoint's weights. The config is the
    stored model_config, else inferred from the shapes; keyword overrides win (kernels,
    attn, norm_pix_loss, num_heads, img_size - position embeddings are then resized).
    Encoder-only weights leave the decoder at its initialisation."""
    ckpt = path_or_checkpoint if isinstance(path_or_checkpoint, Checkpoint) \
        else load_checkpoint(path_or_checkpoint)
    where = ckpt.path or "the checkpoint"
    cfg = infer_model_config(ckpt.state_dict, ckpt.model_config, **overrides)
    try:
        model = MaskedAutoencoderViT(**cfg)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: cannot build a model from config {cfg}: {e}") from e
    stored = ckpt.model_config or {}
    sd = _fit_grid(ckpt.state_dict, stored if "img_size" in stored else None, model) \
        if "img_size" in overrides else ckpt.state_dict
    load_weights(model, sd, where)
    return model


def _jsonable(cfg: Mapping) -> str:
    plain = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
    try:
        return json.dumps(plain, sort_keys=True)
    except TypeError as e:
        raise ConfigError(f"model_config is not JSON-serialisable: {e}") from None


def save_safetensors(model_or_state_dict, path, model_config: Mapping | None = None) -> Path:
    """Write weights (a model, a Checkpoint or a state dict) to a .safetensors file with
    the model config as JSON in the "fastmae_model_config" metadata. Written to a
    temporary file in the same folder and renamed, so a crash never leaves half a file."""
    obj = model_or_state_dict
    config = None
    if isinstance(obj, Checkpoint):
        sd, config = obj.state_dict, obj.model_config
    elif isinstance(obj, torch.nn.Module):
        sd = obj.state_dict()
        config = dict(obj.config) if isinstance(obj, MaskedAutoencoderViT) else None
    elif isinstance(obj, Mapping):
        sd = obj
    else:
        raise ConfigError(f"save_safetensors takes a model, a Checkpoint or a state dict, got "
                          f"{type(obj).__name__}")
    if model_config is not None:
        config = dict(model_config)
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ConfigError(f"state dict entries that are not tensors: {', '.join(map(str, bad[:8]))}")
    # safetensors refuses shared storage (views, tied weights): store independent copies.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}
    metadata = {"format": "pt"}
    if config:
        metadata[CONFIG_KEY] = _jsonable(config)

    from safetensors.torch import save_file
    return atomic_save_file(lambda tmp: save_file(tensors, str(tmp), metadata=metadata), path)
