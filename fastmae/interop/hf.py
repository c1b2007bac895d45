"""Hugging Face ViTMAE <-> fastmae.

Hugging Face keeps the official MAE's structure under other names and splits the
fused qkv projection into q, k and v. Two naming generations exist: transformers 5
(`vit.layers.N.attention.q_proj`, `mlp.fc1`) and transformers 4 and the hub files
(`vit.encoder.layer.N.attention.attention.query`, `intermediate.dense`); both are read,
and weights are written in whichever the installed transformers uses. The position
embeddings use the same channel layout as the official code, so they copy as they are."""
import re
from collections.abc import Mapping

import torch

from ..settings import BackendUnavailable, CheckpointError, ConfigError

# fastmae block suffix -> Hugging Face layer suffix; "q"/"k"/"v" are the thirds of attn.qkv.
LAYER_NAMES = {
    "current": {"norm1": "layernorm_before", "norm2": "layernorm_after",
                "attn.proj": "attention.o_proj", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
                "q": "attention.q_proj", "k": "attention.k_proj", "v": "attention.v_proj"},
    "legacy": {"norm1": "layernorm_before", "norm2": "layernorm_after",
               "attn.proj": "attention.output.dense", "mlp.fc1": "intermediate.dense",
               "mlp.fc2": "output.dense", "q": "attention.attention.query",
               "k": "attention.attention.key", "v": "attention.attention.value"},
}
ENCODER_LAYERS = {"current": "vit.layers.", "legacy": "vit.encoder.layer."}
DECODER_LAYERS = "decoder.decoder_layers."
TOP_NAMES = {
    "cls_token": "vit.embeddings.cls_token",
    "pos_embed": "vit.embeddings.position_embeddings",
    "patch_embed.proj.weight": "vit.embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "vit.embeddings.patch_embeddings.projection.bias",
    "norm.weight": "vit.layernorm.weight",
    "norm.bias": "vit.layernorm.bias",
    "decoder_embed.weight": "decoder.decoder_embed.weight",
    "decoder_embed.bias": "decoder.decoder_embed.bias",
    "mask_token": "decoder.mask_token",
    "decoder_pos_embed": "decoder.decoder_pos_embed",
    "decoder_norm.weight": "decoder.decoder_norm.weight",
    "decoder_norm.bias": "decoder.decoder_norm.bias",
    "decoder_pred.weight": "decoder.decoder_pred.weight",
    "decoder_pred.bias": "decoder.decoder_pred.bias",
}
_LAYER_KEY = re.compile(
    r"^(vit\.layers\.|vit\.encoder\.layer\.|decoder\.decoder_layers\.)(\d+)\.(.+)\.(weight|bias)$")


def _transformers():
    try:
        import transformers
    except ImportError as e:
        raise BackendUnavailable("the Hugging Face converters need transformers "
                                 "(pip install 'fastmae[hf]')") from e
    return transformers


def is_hf_state_dict(state_dict: Mapping) -> bool:
    return any(k.startswith(("vit.embeddings.", "embeddings.patch_embeddings.", "decoder.decoder_"))
               for k in state_dict)


def naming(state_dict: Mapping) -> str:
    """'current' (transformers 5) or 'legacy' (transformers 4, hub files)."""
    return "legacy" if any(".attention.attention." in k or ".encoder.layer." in k
                           for k in state_dict) else "current"


def hf_to_official(state_dict: Mapping) -> dict:
    """Hugging Face ViTMAE weights (ViTMAEForPreTraining, or ViTMAEModel without the
    `vit.` prefix) -> official MAE key names, q/k/v fused into qkv."""
    if not any(k.startswith(("vit.", "decoder.")) for k in state_dict):
        state_dict = {"vit." + k: v for k, v in state_dict.items()}
    gen = naming(state_dict)
    top = {hf: ours for ours, hf in TOP_NAMES.items()}
    layer = {hf: ours for ours, hf in LAYER_NAMES[gen].items()}
    out, qkv, unknown = {}, {}, []
    for key, value in state_dict.items():
        if key in top:
            out[top[key]] = value
            continue
        m = _LAYER_KEY.match(key)
        part = layer.get(m.group(3)) if m else None
        if part is None:
            unknown.append(key)
            continue
        blocks = "decoder_blocks." if m.group(1) == DECODER_LAYERS else "blocks."
        prefix = f"{blocks}{m.group(2)}."
        if part in ("q", "k", "v"):
            qkv.setdefault((prefix, m.group(4)), {})[part] = value
        else:
            out[f"{prefix}{part}.{m.group(4)}"] = value
    if unknown:
        raise CheckpointError(f"unknown Hugging Face ViTMAE keys: {', '.join(unknown[:8])}")
    for (prefix, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(f"{prefix}: Hugging Face weights hold only {sorted(parts)} of q, k, v")
        out[f"{prefix}attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    # qkv_bias=False in Hugging Face: a zero bias computes the same thing.
    for key in [k for k in out if k.endswith("attn.qkv.weight")]:
        bias = key[:-len("weight")] + "bias"
        if bias not in out:
            w = out[key]
            out[bias] = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    return out


def official_to_hf(state_dict: Mapping, gen: str = "current") -> dict:
    """Official MAE key names -> Hugging Face ViTMAEForPreTraining key names."""
    layer = LAYER_NAMES[gen]
    out, unknown = {}, []
    for key, value in state_dict.items():
        if key in TOP_NAMES:
            out[TOP_NAMES[key]] = value
            continue
        m = re.match(r"^(blocks\.|decoder_blocks\.)(\d+)\.(.+)\.(weight|bias)$", key)
        if not m:
            unknown.append(key)
            continue
        prefix = (ENCODER_LAYERS[gen] if m.group(1) == "blocks." else DECODER_LAYERS) + m.group(2) + "."
        part = m.group(3)
        if part == "attn.qkv":
            for name, chunk in zip("qkv", value.chunk(3, dim=0)):
                out[f"{prefix}{layer[name]}.{m.group(4)}"] = chunk.contiguous()
        elif part in layer:
            out[f"{prefix}{layer[part]}.{m.group(4)}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"keys with no Hugging Face ViTMAE counterpart: {', '.join(unknown[:8])}")
    return out


def _field(cfg, name, default=None):
    return cfg.get(name, default) if isinstance(cfg, Mapping) else getattr(cfg, name, default)


def _pair(v, what: str) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    if isinstance(v, (list, tuple)) and len(v) == 2:
        return int(v[0]), int(v[1])
    raise ConfigError(f"Hugging Face {what} must be an int or a pair, got {v!r}")


def model_config_from_hf(cfg) -> dict:
    """MaskedAutoencoderViT kwargs for a ViTMAEConfig (or its dict, e.g. config.json).
    mask_ratio is not a model argument in fastmae: it is passed to each forward call."""
    act = _field(cfg, "hidden_act", "gelu")
    if act != "gelu":
        raise ConfigError(f"Hugging Face hidden_act={act!r}: fastmae's blocks use exact GELU ('gelu')")
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        if _field(cfg, name, 0.0):
            raise ConfigError(f"Hugging Face {name}={_field(cfg, name)}: fastmae's MAE has no dropout "
                              "(the paper uses none); set it to 0 to convert")
    patch = _pair(_field(cfg, "patch_size", 16), "patch_size")
    if patch[0] != patch[1]:
        raise ConfigError(f"Hugging Face patch_size {patch} is not square; fastmae uses square patches")
    dim, heads = _field(cfg, "hidden_size", 768), _field(cfg, "num_attention_heads", 12)
    head_dim = _field(cfg, "head_dim")
    if head_dim is not None and head_dim * heads != dim:
        raise ConfigError(f"Hugging Face head_dim={head_dim} x {heads} heads != hidden_size {dim}")
    dec_dim = _field(cfg, "decoder_hidden_size", 512)
    ratio = _field(cfg, "intermediate_size", 3072) / dim
    dec_ratio = _field(cfg, "decoder_intermediate_size", 2048) / dec_dim
    if int(dec_dim * ratio) != _field(cfg, "decoder_intermediate_size", 2048):
        raise ConfigError(f"Hugging Face MLP ratios differ between encoder ({ratio:g}) and decoder "
                          f"({dec_ratio:g}); fastmae uses one mlp_ratio for both")
    return dict(img_size=_pair(_field(cfg, "image_size", 224), "image_size"), patch_size=patch[0],
                in_chans=_field(cfg, "num_channels", 3), embed_dim=dim,
                depth=_field(cfg, "num_hidden_layers", 12), num_heads=heads,
                decoder_embed_dim=dec_dim, decoder_depth=_field(cfg, "decoder_num_hidden_layers", 8),
                decoder_num_heads=_field(cfg, "decoder_num_attention_heads", 16), mlp_ratio=ratio,
                norm_pix_loss=bool(_field(cfg, "norm_pix_loss", False)),
                norm_eps=float(_field(cfg, "layer_norm_eps", 1e-12)))


def hf_config(model_config, mask_ratio: float = 0.75):
    """transformers.ViTMAEConfig for a fastmae model or its config dict."""
    transformers = _transformers()
    from ..models.mae import to_pair
    cfg = dict(getattr(model_config, "config", model_config))
    h, w = to_pair(cfg.get("img_size", 224))
    if h != w:
        raise ConfigError(f"Hugging Face ViTMAE handles square images only (its patchify and position "
                          f"embeddings assume H == W); this model is {h}x{w}")
    if not 0.0 <= mask_ratio < 1.0:
        raise ConfigError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    dim, dec_dim = cfg.get("embed_dim", 1024), cfg.get("decoder_embed_dim", 512)
    ratio = cfg.get("mlp_ratio", 4.0)
    return transformers.ViTMAEConfig(
        hidden_size=dim, num_hidden_layers=cfg.get("depth", 24),
        num_attention_heads=cfg.get("num_heads", 16), intermediate_size=int(dim * ratio),
        decoder_hidden_size=dec_dim, decoder_num_hidden_layers=cfg.get("decoder_depth", 8),
        decoder_num_attention_heads=cfg.get("decoder_num_heads", 16),
        decoder_intermediate_size=int(dec_dim * ratio), hidden_act="gelu",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        layer_norm_eps=float(cfg.get("norm_eps", 1e-6)), image_size=h,
        patch_size=cfg.get("patch_size", 16), num_channels=cfg.get("in_chans", 3), qkv_bias=True,
        mask_ratio=float(mask_ratio), norm_pix_loss=bool(cfg.get("norm_pix_loss", False)))


def from_hf_vitmae(hf_model, **overrides):
    """A fastmae.MaskedAutoencoderViT with the weights of a Hugging Face
    ViTMAEForPreTraining (or ViTMAEModel: encoder only, decoder left at init).
    Carries layer_norm_eps over as norm_eps; Hugging Face's mask_ratio is a config field,
    fastmae's a forward argument: call model(imgs, hf_model.config.mask_ratio, noise)."""
    transformers = _transformers()
    if not isinstance(hf_model, (transformers.ViTMAEForPreTraining, transformers.ViTMAEModel)):
        raise ConfigError(f"expected a transformers ViTMAEForPreTraining or ViTMAEModel, got "
                          f"{type(hf_model).__name__}")
    from ..models.mae import MaskedAutoencoderViT
    from .statedict import check_overrides, load_weights
    check_overrides(overrides)
    cfg = {**model_config_from_hf(hf_model.config), **overrides}
    sd = hf_to_official(hf_model.state_dict())
    model = MaskedAutoencoderViT(**cfg)
    load_weights(model, sd, f"the {type(hf_model).__name__} weights")
    param = next(hf_model.parameters(), None)
    return model.to(device=param.device, dtype=param.dtype) if param is not None else model


def to_hf_vitmae(model, mask_ratio: float = 0.75):
    """A transformers.ViTMAEForPreTraining with the weights of a fastmae model (or of a
    Checkpoint), on the model's device. mask_ratio becomes the Hugging Face config field."""
    transformers = _transformers()
    from ..models.mae import MaskedAutoencoderViT
    from .weights import Checkpoint
    from .statedict import infer_model_config
    if isinstance(model, Checkpoint):
        cfg, sd = infer_model_config(model.state_dict, model.model_config), model.state_dict
        param = None
    elif isinstance(model, MaskedAutoencoderViT):
        cfg, sd = model.config, model.state_dict()
        param = next(model.parameters())
    else:
        raise ConfigError(f"to_hf_vitmae takes a fastmae.MaskedAutoencoderViT or a Checkpoint, got "
                          f"{type(model).__name__}")
    hf = transformers.ViTMAEForPreTraining(hf_config(cfg, mask_ratio))
    hf_sd = official_to_hf(sd, naming(hf.state_dict()))
    own = hf.state_dict()
    missing, unexpected = sorted(set(own) - set(hf_sd)), sorted(set(hf_sd) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"the weights do not fill a ViTMAEForPreTraining: missing "
                              f"{missing[:8]}, unexpected {unexpected[:8]}")
    hf.load_state_dict(hf_sd, strict=True)
    return hf.to(device=param.device, dtype=param.dtype) if param is not None else hf
