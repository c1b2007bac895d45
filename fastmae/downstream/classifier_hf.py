"""A trained fastmae classifier as a Hugging Face image classifier that
`pipeline("image-classification")` runs offline.

Hugging Face's ViTForImageClassification classifies the cls token after the final norm:
the cls-token models (finetune --cls-token, linprobe --pool cls with its BatchNorm folded
into the head) map onto it name by name. The fine-tuning default (fc_norm of the patch
mean) is BeitForImageClassification with use_mean_pooling and no relative position bias
or layer scale: the same blocks, with BEiT's key projection having no bias - which changes
nothing, since q.b_k is the same for every key and cancels in the softmax. A probe on
the mean of normalised patch tokens has no Hugging Face counterpart."""
import torch

from ..interop.hf import naming, official_to_hf
from ..settings import BackendUnavailable, CheckpointError
from .classifier import encoder_state_dict


def _transformers():
    try:
        import transformers
    except ImportError:
        raise BackendUnavailable("--format hf needs transformers (pip install 'fastmae[hf]')") from None
    return transformers


def hf_classifier(tc):
    """(transformers model with tc's weights, image processor) for a TrainedClassifier."""
    tf = _transformers()
    cfg = tc.encoder.config
    h, w = cfg["img_size"]
    if h != w:
        raise CheckpointError(f"Hugging Face ViT classifiers take square images; this model is {h}x{w}")
    if cfg["in_chans"] != 3:
        raise CheckpointError("Hugging Face image pipelines feed RGB images; this model takes "
                              f"{cfg['in_chans']}-channel images (use --format timm, onnx or pt2)")
    if tc.pool == "probe-avg":
        raise CheckpointError("a linear probe on the mean of normalised patch tokens has no Hugging Face "
                              "classifier counterpart (use --format timm, onnx or pt2, or probe --pool cls)")
    dim = cfg["embed_dim"]
    common = dict(hidden_size=dim, num_hidden_layers=cfg["depth"], num_attention_heads=cfg["num_heads"],
                  intermediate_size=int(dim * cfg["mlp_ratio"]), hidden_act="gelu",
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                  layer_norm_eps=float(cfg["norm_eps"]), image_size=h, patch_size=cfg["patch_size"],
                  num_channels=3, id2label=dict(enumerate(tc.classes)),
                  label2id={c: i for i, c in enumerate(tc.classes)})
    sd = encoder_state_dict(tc.encoder.state_dict())
    head = tc.model.folded_head() if tc.kind == "linprobe" else tc.model.head
    fc_norm = {k: sd.pop(k) for k in [k for k in sd if k.startswith("fc_norm.")]}
    if tc.pool == "avg":
        model = tf.BeitForImageClassification(tf.BeitConfig(
            **common, use_mean_pooling=True, use_absolute_position_embeddings=True,
            use_relative_position_bias=False, use_shared_relative_position_bias=False,
            layer_scale_init_value=0.0, use_mask_token=False, drop_path_rate=0.0))
        gen = naming(model.state_dict())
        hf = {"beit." + k[len("vit."):]: v for k, v in official_to_hf(sd, gen).items()}
        hf = {k: v for k, v in hf.items() if k in model.state_dict() or not k.endswith("k_proj.bias")}
        hf.update({"beit.pooler.layernorm." + k[len("fc_norm."):]: v for k, v in fc_norm.items()})
    else:
        model = tf.ViTForImageClassification(tf.ViTConfig(**common, qkv_bias=True))
        hf = official_to_hf(sd, naming(model.state_dict()))
    hf["classifier.weight"], hf["classifier.bias"] = head.weight.detach(), head.bias.detach()
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(hf)), sorted(set(hf) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"the weights do not fill a {type(model).__name__}: missing {missing[:6]}, "
                              f"unexpected {unexpected[:6]}")
    model.load_state_dict({k: v.detach().clone().contiguous() for k, v in hf.items()}, strict=True)
    model.eval()
    p = tc.preprocess
    # CLIP's processor is the one that resizes the shorter side and centre-crops, as fastmae evaluates.
    processor = tf.CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": p["resize"]}, resample=3,  # PIL bicubic
        do_center_crop=True, crop_size={"height": p["img_size"], "width": p["img_size"]},
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=p["mean"],
        image_std=p["std"], do_convert_rgb=True)
    return model, processor


@torch.no_grad()
def hf_logits(model, imgs: torch.Tensor) -> torch.Tensor:
    return model(pixel_values=imgs).logits
