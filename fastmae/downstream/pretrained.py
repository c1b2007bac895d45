"""Where a classifier's encoder comes from: a fastmae checkpoint, an official MAE .pth
(full or encoder-only), a .safetensors file, or Hugging Face ViTMAE weights (a
save_pretrained folder, or a hub id already in the local cache). Every format goes
through fastmae.interop, which never executes code from a file."""
from pathlib import Path

from .. import interop
from ..settings import BackendUnavailable, CheckpointError, ConfigError
from ..models.registry import model_config
from .classifier import VisionTransformer, encoder_config, load_encoder


def _hf_model(source: str):
    try:
        from transformers import ViTMAEForPreTraining
    except ImportError:
        raise BackendUnavailable(f"{source} is Hugging Face ViTMAE weights but transformers is not "
                                 "installed (pip install 'fastmae[hf]')") from None
    try:
        hf = ViTMAEForPreTraining.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot load Hugging Face ViTMAE weights from {source}: "
                              f"{str(e).splitlines()[0]}") from None
    return hf


def _is_hf(source: str) -> bool:
    """A save_pretrained folder, or a hub id (org/name, no such local path)."""
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return True
        raise CheckpointError(f"{path} is a folder without a Hugging Face config.json; give a "
                              "checkpoint file (.pth / .safetensors) or a save_pretrained folder")
    return not path.exists() and source.count("/") == 1 and not path.suffix


def load_mae(source, **overrides):
    """A fastmae.MaskedAutoencoderViT holding the pretrained weights of `source`."""
    source = str(source)
    if _is_hf(source):
        return interop.from_hf_vitmae(_hf_model(source), **overrides)
    return interop.model_from_checkpoint(Path(source).expanduser(), **overrides)


def load_pretrained(source) -> tuple[dict, dict]:
    """(encoder config, state dict) of a pretrained MAE."""
    source = str(source)
    if _is_hf(source):
        mae = interop.from_hf_vitmae(_hf_model(source))
        return encoder_config(mae.config), mae.state_dict()
    ckpt = interop.load_checkpoint(Path(source).expanduser())
    # Official / bare state dicts carry no config: the architecture follows from the shapes.
    cfg = interop.infer_model_config(ckpt.state_dict, ckpt.model_config)
    return encoder_config(cfg), ckpt.state_dict


def default_layer_decay(depth: int) -> float:
    """The paper's layer-wise lr decay: 0.65 for ViT-B and smaller, 0.75 for ViT-L/H."""
    return 0.65 if depth <= 12 else 0.75


def build_classifier(num_classes: int, *, checkpoint=None, model: str | None = None,
                     from_scratch: bool = False, img_size: int | None = None,
                     global_pool: bool = True, drop_path: float = 0.0, attn: str = "auto",
                     model_overrides: dict | None = None) -> tuple[VisionTransformer, dict]:
    """A VisionTransformer whose architecture comes from the checkpoint (or the named model)
    and whose encoder weights come from the checkpoint unless from_scratch.
    Returns (model, info) with info = {'source', 'load': missing/unexpected keys}."""
    if checkpoint is None and model is None:
        raise ConfigError("give --checkpoint (a pretrained MAE) or --model (with --from-scratch)")
    if checkpoint is None and not from_scratch:
        raise ConfigError("--model without --checkpoint trains from random init: add "
                          "--from-scratch to say so, or give --checkpoint")
    state_dict = None
    if checkpoint is not None:
        cfg, state_dict = load_pretrained(checkpoint)
        source = str(checkpoint)
    else:
        cfg = encoder_config(model_config(model, **(model_overrides or {})))
        source = model
    src_size = cfg.get("img_size", 224)
    src_size = (src_size, src_size) if isinstance(src_size, int) else tuple(int(s) for s in src_size)
    if img_size is not None:
        cfg["img_size"] = img_size
    cfg.pop("norm_pix_loss", None)
    net = VisionTransformer(**cfg, num_classes=num_classes, global_pool=global_pool,
                            drop_path_rate=drop_path, attn=attn)
    info = {"source": source, "from_scratch": bool(from_scratch), "load": None}
    if state_dict is not None and not from_scratch:
        p = cfg["patch_size"]
        info["load"] = load_encoder(net, state_dict, (src_size[0] // p, src_size[1] // p))
    return net, info
