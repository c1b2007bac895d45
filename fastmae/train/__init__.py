"""MAE pretraining: `pretrain(TrainConfig(...))` is what `fastmae train` runs."""
from .config import TrainConfig
from .loop import PretrainResult, pretrain

__all__ = ["TrainConfig", "pretrain", "PretrainResult"]
