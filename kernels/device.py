"""Launch on the tensor's own GPU: a Triton launch goes to the *current* CUDA device, so
every launcher enters the device of its first tensor (as flash-attn does) and a model on
cuda:1 never runs its kernels on cuda:0. CPU tensors (the interpreter) need no guard,
and torch.cuda.device cannot be entered at all on a machine without a driver."""
import contextlib

import torch


def guard(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()
