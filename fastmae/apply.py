"""fastmae.apply_to: make an existing MAE model run on fastmae's ops, in place.

Binds fastmae's step functions (fastmae.models.steps, the code fastmae's own model runs)
and its attention onto
  - models with the official MaskedAutoencoderViT structure (facebookresearch/mae
    models_mae.py), including its timm `Block` / `PatchEmbed` building blocks, and
  - Hugging Face ViTMAEForPreTraining / ViTMAEModel in the transformers 5 layout
    (q_proj/k_proj/v_proj/o_proj) and the transformers 4 layout
    (attention.attention.query/key/value + attention.output.dense),
so that the patch embedding runs on the gathered visible patches only, the decoder input
is built in one pass, the loss reads the images directly, and self-attention runs on the
chosen fastmae backend. Weights, state-dict keys, forward signatures and return types stay
as they were; given the same weights and noise, outputs and parameter gradients match the
unpatched model to floating-point tolerance. What the fast path cannot honour (attention
masks, causal attention, head masks, attention weights as outputs, attention dropout while
training, gradients w.r.t. the input images) raises ConfigError instead of silently
computing something else."""
import inspect
import sys
import types

import torch
import torch.nn as nn
import torch.nn.functional as F

from .models import attention as attn_backends
from .models import steps
from .models.mae import MaskedAutoencoderViT, to_pair
from .ops import dispatch
from .settings import ConfigError

SETTINGS = "_fastmae_settings"


def _settings(module: nn.Module) -> dict:
    return getattr(module, SETTINGS)


def _bind(module: nn.Module, name: str, fn, settings: dict) -> None:
    object.__setattr__(module, SETTINGS, settings)
    setattr(module, name, types.MethodType(fn, module))


def _attend(module: nn.Module, qkv: torch.Tensor, num_heads: int) -> torch.Tensor:
    """fastmae attention on a fused (B, N, 3*D) projection -> (B, N, D)."""
    backend = attn_backends.resolve(_settings(module)["attn"], qkv, num_heads)
    return attn_backends.attention(qkv, num_heads, backend)


def _check_dropout(module: nn.Module, p: float, what: str) -> None:
    if module.training and p > 0:
        raise ConfigError(f"{what}={p} is not supported by fastmae attention (put the model in "
                          "eval mode or set the attention dropout to 0)")


def _check_patch_conv(proj, where: str) -> None:
    if not isinstance(proj, nn.Conv2d):
        raise ConfigError(f"{where} is a {type(proj).__name__}, not a Conv2d patch embedding")
    ks, st = tuple(proj.kernel_size), tuple(proj.stride)
    if ks[0] != ks[1] or ks != st or proj.padding not in ((0, 0), 0) \
            or proj.groups != 1 or tuple(proj.dilation) != (1, 1):
        raise ConfigError(f"{where} is not a square non-overlapping patch convolution "
                          f"(kernel {ks}, stride {st}); fastmae.apply_to cannot patch it")


def _check_scale(scale, head_dim: int, where: str) -> None:
    if abs(scale - head_dim**-0.5) > 1e-12 * head_dim**-0.5:
        raise ConfigError(f"{where}: attention scale {scale} is not 1/sqrt(head_dim); fastmae "
                          "attention uses the standard scale")


# ---------------------------------------------------------------- official structure

def _check_official_images(model, x: torch.Tensor) -> None:
    p = model.patch_embed.proj.kernel_size[0]
    num_patches = model.pos_embed.shape[1] - 1
    size = getattr(model.patch_embed, "img_size", None)  # timm's PatchEmbed has one
    if x.ndim != 4:
        raise ConfigError(f"images must be (B, C, H, W), got shape {tuple(x.shape)}")
    if size is not None and tuple(x.shape[-2:]) != to_pair(size):
        raise ConfigError(f"images of shape {tuple(x.shape)} do not match the model's img_size "
                         f"{to_pair(size)}")
    if x.shape[2] % p or x.shape[3] % p or (x.shape[2] // p) * (x.shape[3] // p) != num_patches:
        raise ConfigError(f"images of shape {tuple(x.shape)} do not give the model's {num_patches} "
                         f"patches of {p}x{p}")


def _official_forward_encoder(self, x, mask_ratio, noise=None):
    _check_official_images(self, x)
    ids_keep, mask, ids_restore = steps.random_masking(x.shape[0], self.pos_embed.shape[1] - 1,
                                                       mask_ratio, noise, x.device)
    x = steps.encoder_input(x, ids_keep, self.patch_embed.proj, self.pos_embed, self.cls_token,
                            _settings(self)["kernels"])
    for blk in self.blocks:
        x = blk(x)
    return self.norm(x), mask, ids_restore


def _official_forward_decoder(self, x, ids_restore):
    x = steps.decoder_input(x, self.decoder_embed, self.mask_token, ids_restore,
                            self.decoder_pos_embed, _settings(self)["kernels"])
    for blk in self.decoder_blocks:
        x = blk(x)
    return self.decoder_pred(self.decoder_norm(x))[:, 1:, :]


def _official_forward_loss(self, imgs, pred, mask):
    return steps.pixel_loss(imgs, pred, mask, self.patch_embed.proj.kernel_size[0],
                            self.norm_pix_loss, _settings(self)["kernels"])


def _official_attention_forward(self, x, attn_mask=None, is_causal=False, **kwargs):
    # timm's Block calls attn(x, attn_mask=None, is_causal=False): the defaults are what
    # MAE runs; only a real mask, causal attention or another argument is refused.
    if attn_mask is not None:
        raise ConfigError("fastmae attention takes no attention mask (attn_mask); MAE attends "
                          "every token to every token")
    if is_causal:
        raise ConfigError("fastmae attention is not causal (is_causal=True); MAE attention is "
                          "bidirectional")
    extra = sorted(k for k, v in kwargs.items() if v is not None)
    if extra:
        raise ConfigError(f"fastmae attention takes no {', '.join(extra)} argument")
    drop = getattr(self, "attn_drop", None)
    _check_dropout(self, getattr(drop, "p", 0.0) if drop is not None else 0.0, "attention dropout p")
    out = self.proj(_attend(self, self.qkv(x), self.num_heads))
    proj_drop = getattr(self, "proj_drop", None)
    return proj_drop(out) if proj_drop is not None else out


OFFICIAL_PARTS = ("patch_embed", "cls_token", "pos_embed", "blocks", "norm", "decoder_embed",
                  "mask_token", "decoder_pos_embed", "decoder_blocks", "decoder_norm",
                  "decoder_pred", "forward_encoder", "forward_decoder", "forward_loss")


def _is_official(model) -> bool:
    return all(hasattr(model, a) for a in OFFICIAL_PARTS) and \
        isinstance(getattr(model.patch_embed, "proj", None), nn.Conv2d)


def _check_official_attention(attn: nn.Module, where: str) -> None:
    for name in ("qkv", "proj", "num_heads"):
        if not hasattr(attn, name):
            raise ConfigError(f"{where} has no {name}: not the official attention structure")
    heads, qkv = attn.num_heads, attn.qkv
    if not isinstance(qkv, nn.Linear) or qkv.out_features % (3 * heads):
        raise ConfigError(f"{where}: qkv {type(qkv).__name__} with {heads} heads is not a fused "
                          "q/k/v Linear projection")
    head_dim = qkv.out_features // (3 * heads)
    if getattr(attn, "head_dim", head_dim) != head_dim or attn.proj.in_features != heads * head_dim:
        raise ConfigError(f"{where}: qkv {qkv.in_features}->{qkv.out_features}, proj "
                          f"{attn.proj.in_features} and {heads} heads do not agree")
    _check_scale(getattr(attn, "scale", head_dim**-0.5), head_dim, where)
    for name, what in (("q_norm", "q/k normalisation"), ("k_norm", "q/k normalisation"),
                       ("norm", "normalisation of the attention output")):
        sub = getattr(attn, name, None)
        if sub is not None and not isinstance(sub, nn.Identity):
            raise ConfigError(f"{where}.{name} is a {type(sub).__name__}; fastmae attention has no {what}")
    if getattr(attn, "gate", None) is not None:
        raise ConfigError(f"{where} has an output gate; fastmae attention has none")


def _apply_official(model, settings) -> list[str]:
    pe = model.patch_embed
    _check_patch_conv(pe.proj, "patch_embed.proj")
    norm = getattr(pe, "norm", None)
    if norm is not None and not isinstance(norm, nn.Identity):
        raise ConfigError("patch_embed.norm is not Identity; fastmae.apply_to cannot patch it")
    if getattr(pe, "dynamic_img_pad", False):
        raise ConfigError("patch_embed pads images dynamically (dynamic_img_pad=True); fastmae's "
                          "patch gather needs images that are a whole number of patches")
    patched = []
    for prefix, blocks in (("blocks", model.blocks), ("decoder_blocks", model.decoder_blocks)):
        for i, blk in enumerate(blocks):
            _check_official_attention(blk.attn, f"{prefix}.{i}.attn")
    for prefix, blocks in (("blocks", model.blocks), ("decoder_blocks", model.decoder_blocks)):
        for i, blk in enumerate(blocks):
            _bind(blk.attn, "forward", _official_attention_forward, settings)
            patched.append(f"{prefix}.{i}.attn.forward")
    for name, fn in (("forward_encoder", _official_forward_encoder),
                     ("forward_decoder", _official_forward_decoder),
                     ("forward_loss", _official_forward_loss)):
        _bind(model, name, fn, settings)
        patched.append(name)
    return patched


# ---------------------------------------------------------------- Hugging Face ViTMAE

def _outputs(module: nn.Module):
    """The modeling module the patched module comes from (its output classes)."""
    return sys.modules[type(module).__module__]


def hf_attention_modules(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(name, module, layout) of the self-attention of every ViTMAELayer in `model`.

    layout "5": transformers 5, ViTMAEAttention with q_proj/k_proj/v_proj/o_proj.
    layout "4": transformers 4, ViTMAEAttention.attention, a ViTMAESelfAttention (or
    ViTMAESdpaSelfAttention) with query/key/value; the output projection
    (attention.output.dense) is a separate module that stays as it is."""
    found = []
    for name, layer in model.named_modules():
        if type(layer).__name__ != "ViTMAELayer":
            continue
        attn = getattr(layer, "attention", None)
        inner = getattr(attn, "attention", None)
        if all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")):
            found.append((f"{name}.attention", attn, "5"))
        elif inner is not None and all(hasattr(inner, n) for n in ("query", "key", "value")):
            found.append((f"{name}.attention.attention", inner, "4"))
        else:
            raise ConfigError(f"{name}.attention is neither the transformers 5 ViTMAE attention "
                              "(q_proj/k_proj/v_proj/o_proj) nor the transformers 4 one "
                              "(attention.query/key/value); fastmae.apply_to cannot patch it")
    return found


def _fused_qkv(hidden_states, q: nn.Linear, k: nn.Linear, v: nn.Linear) -> torch.Tensor:
    # One fused projection instead of three: the concatenated weight is tiny next to the
    # activations, and the autograd of cat hands each projection its own gradient.
    w = torch.cat([q.weight, k.weight, v.weight], dim=0)
    b = None if q.bias is None else torch.cat([q.bias, k.bias, v.bias], dim=0)
    return F.linear(hidden_states, w, b)


def _refuse_output_attentions(module, asked) -> None:
    if asked is None:
        asked = getattr(getattr(module, "config", None), "output_attentions", False)
    if asked:
        raise ConfigError("output_attentions is not available from fastmae attention (the fused "
                          "kernels never form the attention matrix)")


def _hf5_attention_forward(self, hidden_states, attention_mask=None, **kwargs):
    if attention_mask is not None:
        raise ConfigError("fastmae attention takes no attention_mask (MAE never masks attention)")
    _refuse_output_attentions(self, kwargs.get("output_attentions"))
    _check_dropout(self, self.attention_dropout, "attention_probs_dropout_prob")
    qkv = _fused_qkv(hidden_states, self.q_proj, self.k_proj, self.v_proj)
    return self.o_proj(_attend(self, qkv, self.num_attention_heads)), None


def _hf4_dropout(attn: nn.Module) -> float:
    """transformers 4 keeps the attention dropout as dropout_prob (4.48 on),
    attention_probs_dropout_prob (the SDPA class) or an nn.Dropout `dropout` (before)."""
    for name in ("dropout_prob", "attention_probs_dropout_prob"):
        if isinstance(getattr(attn, name, None), (int, float)):
            return float(getattr(attn, name))
    drop = getattr(attn, "dropout", None)
    return float(getattr(drop, "p", 0.0)) if drop is not None else 0.0


def _hf4_self_attention_forward(self, hidden_states, head_mask=None, output_attentions=None, **kwargs):
    if head_mask is not None:
        raise ConfigError("fastmae attention takes no head_mask")
    _refuse_output_attentions(self, output_attentions or kwargs.get("output_attentions"))
    _check_dropout(self, _hf4_dropout(self), "attention_probs_dropout_prob")
    qkv = _fused_qkv(hidden_states, self.query, self.key, self.value)
    # (context, no attention weights): what every transformers 4 caller reads, whether it
    # takes [0] or unpacks two.
    return _attend(self, qkv, self.num_attention_heads), None


def _hf4_guarded_forward(self, *args, **kwargs):
    """transformers 4 (4.48 on) records attention weights with hooks the attention module
    never sees: refuse output_attentions here, then run the model's own forward."""
    forward = type(self).forward
    try:
        asked = inspect.signature(forward).bind_partial(self, *args, **kwargs).arguments
        asked = asked.get("output_attentions", asked.get("kwargs", {}).get("output_attentions"))
    except TypeError:  # the model's forward reports a wrong call itself
        asked = kwargs.get("output_attentions")
    _refuse_output_attentions(self, asked)
    return forward(self, *args, **kwargs)


def _check_hf_attention(attn: nn.Module, layout: str, where: str) -> None:
    heads = attn.num_attention_heads
    if layout == "5":
        head_dim, out = attn.head_dim, attn.q_proj.out_features
        scale = attn.scaling
    else:
        head_dim, out = attn.attention_head_size, attn.query.out_features
        scale = getattr(attn, "scaling", head_dim**-0.5)
    if heads * head_dim != out:
        raise ConfigError(f"{where}: {heads} heads x {head_dim} != {out}")
    _check_scale(scale, head_dim, where)


def _hf_embeddings_forward(self, pixel_values, noise=None, interpolate_pos_encoding=False):
    pe = self.patch_embeddings
    proj = pe.projection
    if pixel_values.shape[1] != pe.num_channels:
        raise ValueError("Make sure that the channel dimension of the pixel values match with the one "
                         f"set in the configuration. Expected {pe.num_channels} but "
                         f"got {pixel_values.shape[1]}.")
    batch, _, height, width = pixel_values.shape
    p = proj.kernel_size[0]
    num_patches = (height // p) * (width // p)
    if interpolate_pos_encoding:
        # Hugging Face's own resizing; it reads only the shape of its first argument.
        shape_only = torch.empty(1, num_patches + 1, self.position_embeddings.shape[-1], device="meta")
        pos = self.interpolate_pos_encoding(shape_only, height, width)
    else:
        size = to_pair(pe.image_size)
        if (height, width) != size:
            raise ValueError(f"Input image size ({height}*{width}) doesn't match model"
                             f" ({size[0]}*{size[1]}).")
        pos = self.position_embeddings
    ids_keep, mask, ids_restore = steps.random_masking(batch, num_patches, self.config.mask_ratio,
                                                       noise, pixel_values.device)
    x = steps.encoder_input(pixel_values, ids_keep, proj, pos, self.cls_token,
                            _settings(self)["kernels"])
    return x, mask, ids_restore


def _hf_decoder_forward(self, hidden_states, ids_restore, output_attentions=False,
                        output_hidden_states=False, return_dict=True, interpolate_pos_encoding=False):
    # One signature for both generations: transformers 5 passes (hidden_states, ids_restore,
    # interpolate_pos_encoding=...); transformers 4 also had the output_* / return_dict flags.
    _refuse_output_attentions(self, output_attentions)
    if interpolate_pos_encoding:
        shape_only = torch.empty(1, ids_restore.shape[1] + 1, 0, device="meta")
        pos = self.interpolate_pos_encoding(shape_only)
    else:
        pos = self.decoder_pos_embed
    x = steps.decoder_input(hidden_states, self.decoder_embed, self.mask_token, ids_restore, pos,
                            _settings(self)["kernels"])
    hidden = () if output_hidden_states else None
    for layer in self.decoder_layers:
        if hidden is not None:
            hidden += (x,)
        # transformers 4 checkpointed decoder layers here; 5's layers checkpoint themselves.
        own = any(c.__name__ == "GradientCheckpointingLayer" for c in type(layer).__mro__)
        if getattr(self, "gradient_checkpointing", False) and self.training and not own:
            out = self._gradient_checkpointing_func(layer.__call__, x)
        else:
            out = layer(x)
        x = out[0] if isinstance(out, tuple) else out
    if hidden is not None:
        hidden += (x,)
    logits = self.decoder_pred(self.decoder_norm(x))[:, 1:, :]
    if not return_dict:
        return tuple(v for v in (logits, hidden) if v is not None)
    return _outputs(self).ViTMAEDecoderOutput(logits=logits, hidden_states=hidden)


def _check_loss_images(model, pixel_values, interpolate_pos_encoding) -> None:
    if not interpolate_pos_encoding and pixel_values.shape[2] != pixel_values.shape[3]:
        raise ValueError("Make sure the pixel values have a squared size that is divisible by the patch size")


def _hf_patch_size(model) -> int:
    return model.vit.embeddings.patch_embeddings.projection.kernel_size[0]


def _hf_forward_loss(self, pixel_values, pred, mask, interpolate_pos_encoding=False):
    """transformers 4's ViTMAEForPreTraining.forward_loss."""
    _check_loss_images(self, pixel_values, interpolate_pos_encoding)
    return steps.pixel_loss(pixel_values, pred, mask, _hf_patch_size(self), self.config.norm_pix_loss,
                            _settings(self)["kernels"])


def _hf5_pretraining_forward(self, pixel_values=None, noise=None, interpolate_pos_encoding=None,
                             attention_mask=None, **kwargs):
    """transformers 5's ViTMAEForPreTraining.forward, whose loss is written inline."""
    return_dict = kwargs.pop("return_dict", None)
    if return_dict is None:
        return_dict = getattr(self.config, "return_dict", True)
    outputs = self.vit(pixel_values, noise=noise, interpolate_pos_encoding=interpolate_pos_encoding,
                       attention_mask=attention_mask, **kwargs)
    latent, ids_restore, mask = outputs.last_hidden_state, outputs.ids_restore, outputs.mask
    logits = self.decoder(latent, ids_restore, interpolate_pos_encoding=interpolate_pos_encoding).logits
    _check_loss_images(self, pixel_values, interpolate_pos_encoding)
    loss = steps.pixel_loss(pixel_values, logits, mask, _hf_patch_size(self), self.config.norm_pix_loss,
                            _settings(self)["kernels"])
    out = _outputs(self).ViTMAEForPreTrainingOutput(
        loss=loss, logits=logits, mask=mask, ids_restore=ids_restore,
        hidden_states=outputs.hidden_states, attentions=outputs.attentions)
    return out if return_dict else out.to_tuple()


def _apply_hf(model, pretraining: bool, settings) -> tuple[list[str], str]:
    vit, prefix = (model.vit, "vit.") if pretraining else (model, "")
    emb = vit.embeddings
    _check_patch_conv(emb.patch_embeddings.projection, f"{prefix}embeddings.patch_embeddings.projection")
    attns = hf_attention_modules(model)
    layouts = {layout for _, _, layout in attns}
    if len(layouts) != 1:
        raise ConfigError(f"found ViTMAE attention layouts {sorted(layouts)} in one model; "
                          "fastmae.apply_to expects one transformers generation")
    layout = layouts.pop()
    for name, module, _ in attns:
        _check_hf_attention(module, layout, name)
    _bind(emb, "forward", _hf_embeddings_forward, settings)
    patched = [f"{prefix}embeddings.forward"]
    attention_forward = _hf5_attention_forward if layout == "5" else _hf4_self_attention_forward
    for name, module, _ in attns:
        _bind(module, "forward", attention_forward, settings)
        patched.append(f"{name}.forward")
    if layout == "4":
        for m, name in ((vit, f"{prefix}forward"), (model, "forward")):
            if name not in patched:
                _bind(m, "forward", _hf4_guarded_forward, settings)
                patched.append(name)
    if pretraining:
        _bind(model.decoder, "forward", _hf_decoder_forward, settings)
        patched.append("decoder.forward")
        if hasattr(type(model), "forward_loss"):
            _bind(model, "forward_loss", _hf_forward_loss, settings)
            patched.append("forward_loss")
        else:
            _bind(model, "forward", _hf5_pretraining_forward, settings)
            patched.append("forward")
    return patched, f"transformers-{layout}"


def _hf_kind(model) -> str | None:
    """By class name, so that any transformers version (and a subclass) is recognised."""
    names = {c.__name__ for c in type(model).__mro__}
    if "ViTMAEForPreTraining" in names and hasattr(model, "vit") and hasattr(model, "decoder"):
        return "hf-vitmae-pretraining"
    if "ViTMAEModel" in names and hasattr(model, "embeddings"):
        return "hf-vitmae"
    return None


def apply_to(model: nn.Module, kernels: str = "auto", attn: str = "auto") -> nn.Module:
    """Patch `model` in place to run on fastmae's ops and attention; returns it.

    Supports transformers ViTMAEForPreTraining and ViTMAEModel (transformers 4 and 5
    layouts), models with the official MaskedAutoencoderViT structure (timm blocks
    included), and fastmae's own model (whose settings it updates).
    `model._fastmae_applied` records the model kind, the layout, the settings and what was
    patched. Calling it again re-applies with the new settings."""
    dispatch.check_kernels(kernels)
    attn_backends.check_backend(attn)
    settings = {"kernels": kernels, "attn": attn}
    kind, layout = _hf_kind(model), None
    if isinstance(model, MaskedAutoencoderViT):
        kind, layout = "fastmae", "fastmae"
        model.kernels = kernels
        model.set_attn_backend(attn)
        patched = ["kernels", "attention backend"]
    elif kind is not None:
        patched, layout = _apply_hf(model, kind == "hf-vitmae-pretraining", settings)
    elif _is_official(model):
        kind, layout = "official-mae", "official"
        patched = _apply_official(model, settings)
    else:
        raise ConfigError(f"fastmae.apply_to does not know {type(model).__module__}."
                          f"{type(model).__name__}: it patches transformers ViTMAEForPreTraining/"
                          "ViTMAEModel and models with the official MaskedAutoencoderViT structure")
    object.__setattr__(model, "_fastmae_applied", {"model": kind, "layout": layout, "kernels": kernels,
                                                   "attn": attn, "patched": patched})
    return model
