from .mae import MaskedAutoencoderViT
from .registry import CONFIGS, create_model, model_config

__all__ = ["MaskedAutoencoderViT", "create_model", "model_config", "CONFIGS"]
