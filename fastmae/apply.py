"""fastmae.apply_to: make an existing MAE model run on fastmae's ops, in place.

Patches a Hugging Face ViTMAEForPreTraining / ViTMAEModel, or any model with the
official MaskedAutoencoderViT structure (facebookresearch/mae models_mae.py), so that
  - masking runs the patch embedding on the gathered visible patches only
    (ops.gather_visible_patches) instead of embedding every patch and discarding 75%,
  - the decoder input is built in one pass (ops.unshuffle_with_mask_token),
  - the loss reads the images directly (ops.masked_pixel_loss), and
  - self-attention runs on the chosen fastmae backend (flash-attn / SDPA / math).
Weights, state-dict keys, forward signatures and return types stay as they were; given
the same weights and noise, outputs and parameter gradients match the unpatched model to
floating-point tolerance. Features the fast path cannot honour (attention masks or
weights, attention dropout while training, gradients w.r.t. the input images) raise
ConfigError instead of silently computing something else."""
import sys
import types

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops
from .settings import ConfigError
from .models import attention as attn_backends
from .models.mae import MaskedAutoencoderViT
from .ops import dispatch

SETTINGS = "_fastmae_settings"


def _settings(module: nn.Module) -> dict:
    return getattr(module, SETTINGS)


def _bind(module: nn.Module, name: str, fn, settings: dict) -> None:
    object.__setattr__(module, SETTINGS, settings)
    setattr(module, name, types.MethodType(fn, module))


def _no_image_grad(imgs: torch.Tensor) -> None:
    if imgs.requires_grad and torch.is_grad_enabled():
        raise ConfigError("a model patched by fastmae.apply_to computes no gradient with respect to "
                          "the input images (MAE training never needs one); pass images that do not "
                          "require grad")


def _masking(noise, batch: int, length: int, mask_ratio: float, device):
    """The official per-sample shuffle: argsort of uniform noise; mask 1 = removed."""
    len_keep = int(length * (1 - mask_ratio))
    if noise is None:
        noise = torch.rand(batch, length, device=device)
    elif tuple(noise.shape) != (batch, length):
        raise ValueError(f"noise must have shape (batch, num_patches) = ({batch}, {length}), got "
                         f"{tuple(noise.shape)}")
    ids_shuffle = torch.argsort(noise, dim=1).to(device)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = (ids_restore >= len_keep).to(torch.get_default_dtype())
    return ids_shuffle[:, :len_keep], mask, ids_restore


def _embed_visible(imgs, ids_keep, proj: nn.Conv2d, pos_embed, cls_token, kernels):
    """cls + patch embedding of the kept patches only, each plus its position: the same
    values as conv-embedding every patch, adding positions and gathering."""
    patches = ops.gather_visible_patches(imgs, ids_keep, proj.kernel_size[0], kernels)
    w = proj.weight.permute(0, 2, 3, 1).reshape(proj.weight.shape[0], -1)
    x = F.linear(patches.to(w.dtype), w, proj.bias) + pos_embed[0, 1:][ids_keep]
    cls = (cls_token + pos_embed[:, :1]).expand(x.shape[0], -1, -1)
    return torch.cat([cls, x], dim=1)


def _check_patch_conv(proj, where: str) -> None:
    if not isinstance(proj, nn.Conv2d):
        raise ConfigError(f"{where} is a {type(proj).__name__}, not a Conv2d patch embedding")
    ks, st = tuple(proj.kernel_size), tuple(proj.stride)
    if ks[0] != ks[1] or ks != st or proj.padding not in ((0, 0), 0) \
            or proj.groups != 1 or tuple(proj.dilation) != (1, 1):
        raise ConfigError(f"{where} is not a square non-overlapping patch convolution "
                          f"(kernel {ks}, stride {st}); fastmae.apply_to cannot patch it")


def _run_attention(settings: dict, qkv: torch.Tensor, num_heads: int) -> torch.Tensor:
    backend = attn_backends.resolve(settings["attn"], qkv, num_heads)
    return attn_backends.attention(qkv, num_heads, backend)


# ---------------------------------------------------------------- official structure

def _official_forward_encoder(self, x, mask_ratio, noise=None):
    kernels = _settings(self)["kernels"]
    _no_image_grad(x)
    p = self.patch_embed.proj.kernel_size[0]
    num_patches = self.pos_embed.shape[1] - 1
    if x.ndim != 4 or (x.shape[2] // p) * (x.shape[3] // p) != num_patches:
        raise ValueError(f"images of shape {tuple(x.shape)} do not give the model's {num_patches} "
                         f"patches of {p}x{p}")
    ids_keep, mask, ids_restore = _masking(noise, x.shape[0], num_patches, mask_ratio, x.device)
    x = _embed_visible(x, ids_keep, self.patch_embed.proj, self.pos_embed, self.cls_token, kernels)
    for blk in self.blocks:
        x = blk(x)
    return self.norm(x), mask, ids_restore


def _official_forward_decoder(self, x, ids_restore):
    x = self.decoder_embed(x)
    x = ops.unshuffle_with_mask_token(x, self.mask_token, ids_restore, self.decoder_pos_embed,
                                      _settings(self)["kernels"])
    for blk in self.decoder_blocks:
        x = blk(x)
    x = self.decoder_pred(self.decoder_norm(x))
    return x[:, 1:, :]


def _official_forward_loss(self, imgs, pred, mask):
    return ops.masked_pixel_loss(pred, imgs, mask, self.patch_embed.proj.kernel_size[0],
                                 bool(self.norm_pix_loss), _settings(self)["kernels"])


def _official_attention_forward(self, x, *args, **kwargs):
    extra = [a for a in list(args) + list(kwargs.values()) if a is not None]
    if extra:
        raise ConfigError("fastmae attention takes no attention mask or extra arguments")
    drop = getattr(self, "attn_drop", None)
    if self.training and drop is not None and getattr(drop, "p", 0.0) > 0:
        raise ConfigError(f"attention dropout p={drop.p} is not supported by fastmae attention")
    out = self.proj(_run_attention(_settings(self), self.qkv(x), self.num_heads))
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
    dim = attn.qkv.in_features
    if attn.qkv.out_features != 3 * dim or dim % attn.num_heads:
        raise ConfigError(f"{where}: qkv {attn.qkv.in_features}->{attn.qkv.out_features} with "
                          f"{attn.num_heads} heads is not a fused q/k/v projection")
    head_dim = dim // attn.num_heads
    scale = getattr(attn, "scale", head_dim**-0.5)
    if abs(scale - head_dim**-0.5) > 1e-12 * head_dim**-0.5:
        raise ConfigError(f"{where}: attention scale {scale} is not 1/sqrt(head_dim); fastmae "
                          "attention uses the standard scale")
    for name in ("q_norm", "k_norm", "norm"):
        sub = getattr(attn, name, None)
        if sub is not None and not isinstance(sub, nn.Identity):
            raise ConfigError(f"{where}.{name} is a {type(sub).__name__}; fastmae attention has no "
                              "q/k normalisation")


def _apply_official(model, settings) -> list[str]:
    _check_patch_conv(model.patch_embed.proj, "patch_embed.proj")
    norm = getattr(model.patch_embed, "norm", None)
    if norm is not None and not isinstance(norm, nn.Identity):
        raise ConfigError("patch_embed.norm is not Identity; fastmae.apply_to cannot patch it")
    patched = []
    for prefix, blocks in (("blocks", model.blocks), ("decoder_blocks", model.decoder_blocks)):
        for i, blk in enumerate(blocks):
            _check_official_attention(blk.attn, f"{prefix}.{i}.attn")
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
    """The transformers modeling module the patched module comes from (its output classes)."""
    return sys.modules[type(module).__module__]


def _hf_embeddings_forward(self, pixel_values, noise=None, interpolate_pos_encoding=False):
    kernels = _settings(self)["kernels"]
    proj = self.patch_embeddings.projection
    if pixel_values.shape[1] != self.patch_embeddings.num_channels:
        raise ValueError("Make sure that the channel dimension of the pixel values match with the one "
                         f"set in the configuration. Expected {self.patch_embeddings.num_channels} but "
                         f"got {pixel_values.shape[1]}.")
    _no_image_grad(pixel_values)
    batch, _, height, width = pixel_values.shape
    p = proj.kernel_size[0]
    num_patches = (height // p) * (width // p)
    dim = self.position_embeddings.shape[-1]
    if interpolate_pos_encoding:
        # Hugging Face's own resizing; it reads only the shape of its first argument.
        shape_only = torch.empty(1, num_patches + 1, dim, device="meta")
        pos = self.interpolate_pos_encoding(shape_only, height, width)
    else:
        if height != self.image_size[0] or width != self.image_size[1]:
            raise ValueError(f"Input image size ({height}*{width}) doesn't match model"
                             f" ({self.image_size[0]}*{self.image_size[1]}).")
        pos = self.position_embeddings
    ids_keep, mask, ids_restore = _masking(noise, batch, num_patches, self.config.mask_ratio,
                                           pixel_values.device)
    x = _embed_visible(pixel_values, ids_keep, proj, pos, self.cls_token, kernels)
    return x, mask, ids_restore


def _hf_decoder_forward(self, hidden_states, ids_restore, interpolate_pos_encoding=False):
    x = self.decoder_embed(hidden_states)
    if interpolate_pos_encoding:
        shape_only = torch.empty(1, ids_restore.shape[1] + 1, 0, device="meta")
        pos = self.interpolate_pos_encoding(shape_only)
    else:
        pos = self.decoder_pos_embed
    x = ops.unshuffle_with_mask_token(x, self.mask_token, ids_restore.to(x.device), pos,
                                      _settings(self)["kernels"])
    for layer in self.decoder_layers:
        x = layer(x)
    logits = self.decoder_pred(self.decoder_norm(x))[:, 1:, :]
    return _outputs(self).ViTMAEDecoderOutput(logits=logits)


def _hf_attention_forward(self, hidden_states, attention_mask=None, **kwargs):
    if attention_mask is not None:
        raise ConfigError("fastmae attention takes no attention_mask (MAE never masks attention)")
    if kwargs.get("output_attentions", getattr(self.config, "output_attentions", False)):
        raise ConfigError("output_attentions is not available from fastmae attention (the fused "
                          "kernels never form the attention matrix)")
    if self.training and self.attention_dropout > 0:
        raise ConfigError(f"attention_probs_dropout_prob={self.attention_dropout} is not supported "
                          "by fastmae attention")
    # One fused projection instead of three: the concatenated weight is tiny next to the
    # activations, and the autograd of cat hands each projection its own gradient.
    w = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight], dim=0)
    b = None if self.q_proj.bias is None else \
        torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias], dim=0)
    out = _run_attention(_settings(self), F.linear(hidden_states, w, b), self.num_attention_heads)
    return self.o_proj(out), None


def _hf_pretraining_forward(self, pixel_values=None, noise=None, interpolate_pos_encoding=None,
                            attention_mask=None, **kwargs):
    return_dict = kwargs.pop("return_dict", None)
    if return_dict is None:
        return_dict = getattr(self.config, "return_dict", True)
    outputs = self.vit(pixel_values, noise=noise, interpolate_pos_encoding=interpolate_pos_encoding,
                       attention_mask=attention_mask, **kwargs)
    latent, ids_restore, mask = outputs.last_hidden_state, outputs.ids_restore, outputs.mask
    logits = self.decoder(latent, ids_restore, interpolate_pos_encoding=interpolate_pos_encoding).logits
    if not interpolate_pos_encoding and pixel_values.shape[2] != pixel_values.shape[3]:
        raise ValueError("Make sure the pixel values have a squared size that is divisible by the patch size")
    loss = ops.masked_pixel_loss(logits, pixel_values, mask, self.config.patch_size,
                                 bool(self.config.norm_pix_loss), _settings(self)["kernels"])
    out = _outputs(self).ViTMAEForPreTrainingOutput(
        loss=loss, logits=logits, mask=mask, ids_restore=ids_restore,
        hidden_states=outputs.hidden_states, attentions=outputs.attentions)
    return out if return_dict else out.to_tuple()


def _check_hf_attention(attn: nn.Module, where: str) -> None:
    for name in ("q_proj", "k_proj", "v_proj", "o_proj", "num_attention_heads", "head_dim", "scaling"):
        if not hasattr(attn, name):
            raise ConfigError(f"{where} has no {name}: this transformers version's ViTMAE attention "
                              "is not one fastmae.apply_to knows (transformers 5 layout expected)")
    if attn.num_attention_heads * attn.head_dim != attn.q_proj.out_features:
        raise ConfigError(f"{where}: {attn.num_attention_heads} heads x {attn.head_dim} != "
                          f"{attn.q_proj.out_features}")
    if abs(attn.scaling - attn.head_dim**-0.5) > 1e-12 * attn.head_dim**-0.5:
        raise ConfigError(f"{where}: attention scaling {attn.scaling} is not 1/sqrt(head_dim)")


def _apply_hf_vit(vit, prefix: str, settings) -> list[str]:
    emb = vit.embeddings
    _check_patch_conv(emb.patch_embeddings.projection, f"{prefix}embeddings.patch_embeddings.projection")
    _bind(emb, "forward", _hf_embeddings_forward, settings)
    patched = [f"{prefix}embeddings.forward"]
    for name, module in vit.named_modules():
        if type(module).__name__ == "ViTMAEAttention":
            _check_hf_attention(module, prefix + name)
            _bind(module, "forward", _hf_attention_forward, settings)
            patched.append(f"{prefix}{name}.forward")
    return patched


def _apply_hf_pretraining(model, settings) -> list[str]:
    patched = _apply_hf_vit(model.vit, "vit.", settings)
    for name, module in model.decoder.named_modules():
        if type(module).__name__ == "ViTMAEAttention":
            _check_hf_attention(module, "decoder." + name)
            _bind(module, "forward", _hf_attention_forward, settings)
            patched.append(f"decoder.{name}.forward")
    _bind(model.decoder, "forward", _hf_decoder_forward, settings)
    _bind(model, "forward", _hf_pretraining_forward, settings)
    return patched + ["decoder.forward", "forward"]


def _hf_kind(model) -> str | None:
    tf = sys.modules.get("transformers")
    if tf is None or not type(model).__module__.startswith("transformers."):
        return None
    if isinstance(model, tf.ViTMAEForPreTraining):
        return "hf-vitmae-pretraining"
    if isinstance(model, tf.ViTMAEModel):
        return "hf-vitmae"
    return None


def apply_to(model: nn.Module, kernels: str = "auto", attn: str = "auto") -> nn.Module:
    """Patch `model` in place to run on fastmae's ops and attention; returns it.

    Supports transformers ViTMAEForPreTraining and ViTMAEModel, models with the official
    MaskedAutoencoderViT structure, and fastmae's own model (whose settings it updates).
    `model._fastmae_applied` records the model kind, the settings and what was patched.
    Calling it again re-applies with the new settings."""
    dispatch.check_kernels(kernels)
    attn_backends.check_backend(attn)
    settings = {"kernels": kernels, "attn": attn}
    kind = _hf_kind(model)
    if isinstance(model, MaskedAutoencoderViT):
        kind = "fastmae"
        model.kernels = kernels
        model.set_attn_backend(attn)
        patched = ["kernels", "attention backend"]
    elif kind is not None:
        if kind == "hf-vitmae-pretraining":
            patched = _apply_hf_pretraining(model, settings)
        else:
            patched = _apply_hf_vit(model, "", settings)
    elif _is_official(model):
        kind = "official-mae"
        patched = _apply_official(model, settings)
    else:
        raise ConfigError(f"fastmae.apply_to does not know {type(model).__module__}."
                          f"{type(model).__name__}: it patches transformers ViTMAEForPreTraining/"
                          "ViTMAEModel and models with the official MaskedAutoencoderViT structure")
    object.__setattr__(model, "_fastmae_applied",
                       {"model": kind, "kernels": kernels, "attn": attn, "patched": patched})
    return model
