"""fastmae: fast Masked Autoencoder pretraining of Vision Transformers."""
from .settings import BackendUnavailable, CheckpointError, ConfigError, DataError, FastMAEError
from .models import CONFIGS, MaskedAutoencoderViT, create_model
from .apply import apply_to

__version__ = "0.1.0"
__all__ = ["MaskedAutoencoderViT", "create_model", "CONFIGS", "FastMAEError", "ConfigError",
           "CheckpointError", "DataError", "BackendUnavailable", "apply_to"]
