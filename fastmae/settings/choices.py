"""The allowed values of every run setting, spelled once. Flags, configs and library
arguments are checked against these tuples; nothing else in fastmae lists them."""
from .errors import ConfigError

KERNELS = ("auto", "triton", "torch")            # fastmae ops: Triton kernels or torch
ATTENTION = ("auto", "flash", "sdpa", "math")    # encoder/decoder self-attention
LOADERS = ("auto", "dali", "torch")              # image decoding and augmentation
PRECISIONS = ("auto", "bf16", "fp16", "fp32")    # autocast dtype of a step
DEVICES = ("auto", "cpu", "cuda", "cuda:N")      # what --device takes (N a GPU index)
COMPILE = ("auto", "on", "off")                  # torch.compile of the model
COMPILE_MODES = ("model", "blocks")             # what is compiled: the whole model or each block

CHOICES = {"kernels": KERNELS, "attn": ATTENTION, "loader": LOADERS, "precision": PRECISIONS,
           "compile": COMPILE, "compile_mode": COMPILE_MODES}
# How an error message names each setting.
LABELS = {"kernels": "kernels", "attn": "attention backend", "loader": "data loader",
          "precision": "precision", "compile": "compile setting",
          "compile_mode": "compile mode"}


def check_choice(setting: str, value) -> str:
    """`value` if it is one of `setting`'s allowed values, else one clear ConfigError."""
    allowed = CHOICES[setting]
    if value not in allowed:
        raise ConfigError(f"unknown {LABELS[setting]} {value!r}; choose one of {', '.join(allowed)}")
    return value
