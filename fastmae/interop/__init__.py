"""Weights in and out of fastmae: the official MAE checkpoints, fastmae training
checkpoints, bare state dicts and safetensors files (all loaded without running any
pickled code), Hugging Face ViTMAE models, and timm VisionTransformer encoders."""
from .checkpoint import load_checkpoint, model_from_checkpoint, save_safetensors
from .hf import from_hf_vitmae, hf_config, to_hf_vitmae
from .statedict import infer_model_config
from .timm import timm_vit_kwargs, to_timm_vit
from .weights import Checkpoint

__all__ = ["Checkpoint", "load_checkpoint", "model_from_checkpoint", "save_safetensors",
           "infer_model_config", "from_hf_vitmae", "to_hf_vitmae", "hf_config", "to_timm_vit",
           "timm_vit_kwargs"]
