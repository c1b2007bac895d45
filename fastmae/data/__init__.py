"""Images in: folders and file lists, sharded per rank, decoded and augmented by NVIDIA DALI
(when installed) or torchvision, bad files skipped; plus a small built-in synthetic dataset."""
from .base import DataWarning
from .builtin import builtin_dataset
from .images import BadImage
from .loader import classification_loader, dali_available, pretrain_loader, usable
from .prepare import size_hint  # the module itself: fastmae.data.prepare
from .sources import EXTENSIONS, Samples, epoch_order, scan
from .transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["scan", "Samples", "pretrain_loader", "classification_loader", "builtin_dataset",
           "IMAGENET_MEAN", "IMAGENET_STD", "EXTENSIONS", "epoch_order", "usable", "dali_available",
           "BadImage", "DataWarning", "size_hint"]
