"""Pretrained weights out of fastmae, for other libraries:
timm     encoder .safetensors that timm's VisionTransformer loads (all but head.*);
hf       transformers ViTMAEForPreTraining: a save_pretrained folder, or one .safetensors;
official {'model': state_dict} .pth, as facebookresearch/mae saves and loads.
A fine-tuned classifier (finetune / linprobe checkpoint) goes to export_classifier: timm,
hf, onnx or pt2 with its head, pooling, class names and evaluation transform.
An existing --out is only replaced with force=True."""
import json
from pathlib import Path

import torch

from .. import interop
from ..settings import CheckpointError, ConfigError
from ..files import atomic_save_dir, atomic_save_file, check_new
from .export_classifier import FORMATS as CLASSIFIER_FORMATS
from .export_classifier import export_classifier
from .pretrained import load_mae
from .trained import load_trained, read_raw

PRETRAINED_FORMATS = ("timm", "hf", "official")
FORMATS = PRETRAINED_FORMATS + tuple(f for f in CLASSIFIER_FORMATS if f not in PRETRAINED_FORMATS)


def _plain(cfg: dict) -> str:
    return json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}, sort_keys=True)


def _save_safetensors(sd: dict, out: Path, metadata: dict) -> None:
    from safetensors.torch import save_file
    tensors = {k: v.detach().cpu().contiguous() for k, v in sd.items()}
    atomic_save_file(lambda tmp: save_file(tensors, str(tmp), metadata=metadata), out)


def export(checkpoint, fmt: str, out, *, force: bool = False, global_pool: str = "token",
           onnx_exporter: str = "auto") -> dict:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if read_raw(checkpoint) is not None:
        if fmt not in CLASSIFIER_FORMATS:
            raise CheckpointError(f"{checkpoint} is a fine-tuned classifier; --format {fmt} holds "
                                  "pretraining weights (a classifier exports as "
                                  f"{', '.join(CLASSIFIER_FORMATS)})")
        return export_classifier(load_trained(checkpoint, attn="auto"), fmt, out, force=force,
                                 exporter=onnx_exporter)
    if fmt not in PRETRAINED_FORMATS:
        raise CheckpointError(f"{checkpoint} is not a fine-tuned classifier: --format {fmt} exports the "
                              "checkpoints of `fastmae finetune` / `fastmae linprobe` (a pretrained MAE "
                              "exports as timm, hf or official)")
    out = Path(out).expanduser()
    hf_dir = fmt == "hf" and out.suffix != ".safetensors"
    check_new(out, force, "folder" if hf_dir else "output")
    if fmt == "timm" and out.suffix not in (".safetensors", ".pth", ".bin"):
        raise ConfigError(f"--format timm writes .safetensors (or .pth), not {out.name}")
    if fmt == "official" and out.suffix not in (".pth", ".pt"):
        raise ConfigError(f"--format official writes a .pth file, not {out.name}")
    mae = load_mae(checkpoint, kernels="torch")
    mae.eval()
    cfg = dict(mae.config)
    if fmt == "timm":
        sd = interop.to_timm_vit(mae.state_dict(), global_pool=global_pool)
        if out.suffix == ".safetensors":
            _save_safetensors(sd, out, {"format": "pt", "fastmae_model_config": _plain(cfg)})
        else:
            atomic_save_file(lambda tmp: torch.save({k: v.contiguous() for k, v in sd.items()}, tmp), out)
        keys = len(sd)
    elif fmt == "hf":
        hf = interop.to_hf_vitmae(mae)
        if hf_dir:
            atomic_save_dir(lambda tmp: hf.save_pretrained(str(tmp)), out)
        else:
            _save_safetensors(hf.state_dict(), out, {"format": "pt"})
        keys = len(hf.state_dict())
    else:
        sd = {k: v.detach().cpu() for k, v in mae.state_dict().items()}
        atomic_save_file(lambda tmp: torch.save({"model": sd, "model_config": {
            k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}}, tmp), out)
        keys = len(sd)
    return {"format": fmt, "out": str(out), "tensors": keys, "model_config": json.loads(_plain(cfg))}
