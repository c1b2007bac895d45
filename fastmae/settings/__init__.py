"""The low floor every other part of fastmae stands on: the allowed values of each run
setting, device and precision resolution, the optimizer recipe and the typed errors.
It imports nothing from the rest of fastmae."""
from .choices import (ATTENTION, CHOICES, COMPILE, COMPILE_MODES, DEVICES, KERNELS, LOADERS, PRECISIONS,
                      check_choice)
from .device import activation_dtype, amp_dtype, autocast, resolve_device, resolve_precision
from .errors import (BackendUnavailable, CheckpointError, ConfigError, DataError, FastMAEError,
                     TrainingError)
from .optim import adamw, build_optimizer, no_weight_decay, param_groups

__all__ = ["ATTENTION", "CHOICES", "COMPILE", "COMPILE_MODES", "DEVICES", "KERNELS", "LOADERS",
           "PRECISIONS", "check_choice", "activation_dtype", "amp_dtype", "autocast", "resolve_device",
           "resolve_precision", "BackendUnavailable", "CheckpointError", "ConfigError", "DataError",
           "FastMAEError", "TrainingError", "adamw", "build_optimizer", "no_weight_decay",
           "param_groups"]
