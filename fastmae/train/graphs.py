"""The whole training step (forward, backward, AdamW) captured once in a CUDA graph and
replayed: one launch per step instead of hundreds, no host work between the kernels.

A graph replays fixed kernels on fixed memory, so: the batch size and mask ratio are fixed
(the number of kept patches is part of every shape); images and masking noise are copied
into static buffers before each replay; the learning rate is a tensor on the device that
the schedule writes in place; the optimizer is capturable fused AdamW; the step reads
nothing back to the host (train/step.py), and a non-finite step is skipped by the fused
kernel's found_inf flag, which a graph replays like any other kernel argument.

Warm-up runs on a side stream before capture (cuBLAS/cuDNN workspaces, attention auto's
timings, torch.compile), with the optimizer told to skip, so the warm-up leaves the weights,
the moments and the step count as they were."""
import torch

from ..settings import ConfigError, amp_dtype
from ..settings.optim import BETAS, param_groups
from . import step as train_step

WARMUP_STEPS = 3


def check_supported(device: torch.device, dist, precision: str, accum_iter: int) -> None:
    """One clear ConfigError for every setting --cuda-graphs cannot run with."""
    if device.type != "cuda":
        raise ConfigError(f"--cuda-graphs needs a CUDA device (this run is on {device.type}); "
                          "leave it out on the CPU")
    if dist.enabled:
        raise ConfigError("--cuda-graphs is not supported with torchrun/DDP (DDP's gradient "
                          "all-reduce runs outside the captured step); leave it out")
    if accum_iter != 1:
        raise ConfigError("--cuda-graphs captures one micro-batch per step; it cannot be used with "
                          f"--accum-iter {accum_iter}")
    if precision == "fp16":
        raise ConfigError("--cuda-graphs does not capture fp16's GradScaler; use --precision bf16")


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, device: torch.device):
    """The settings recipe (same groups and betas) as capturable fused AdamW with the lr
    a device tensor."""
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=torch.tensor(lr, device=device),
                             betas=BETAS, fused=True, capturable=True)


def set_lr(optimizer, value: float) -> None:
    """The schedule's lr written into the tensor the graph reads (schedule.set_lr would
    replace it by a float the graph never sees)."""
    for group in optimizer.param_groups:
        lr, device = group["lr"], group["params"][0].device
        v = value * group.get("lr_scale", 1.0)
        if torch.is_tensor(lr) and lr.device == device:
            lr.fill_(v)
        else:  # a float or a host tensor from a resumed checkpoint: only before the capture
            group["lr"] = torch.tensor(v, device=device)


class GraphedStep:
    """step(imgs, noise): one captured training step, captured at the first call.
    `run_model(imgs, mask_ratio, noise)` returns (loss, pred, mask)."""

    def __init__(self, model, run_model, optimizer, state: train_step.StepState, precision: str,
                 clip_grad, mask_ratio: float, dist):
        self.model, self.run_model, self.optimizer, self.state = model, run_model, optimizer, state
        self.clip_grad, self.mask_ratio, self.dist = clip_grad, mask_ratio, dist
        self.dtype = amp_dtype(precision)
        self.imgs = self.noise = self.poison = self.graph = None

    def _body(self) -> None:
        # No autocast weight cache in a graph: its casts would be captured once and go stale.
        with torch.autocast("cuda", dtype=self.dtype, enabled=self.dtype is not None, cache_enabled=False):
            loss, _, _ = self.run_model(self.imgs, self.mask_ratio, self.noise)
        window_loss = train_step.backward(loss, 1, None)
        # Warm-up poisons the window's loss (nan; 0 once captured): the optimizer skips,
        # exactly as for a bad batch.
        window_loss = window_loss + self.poison
        train_step.optimizer_step(self.model, self.optimizer, None, self.clip_grad, window_loss,
                                  self.state, self.dist)

    def capture(self, imgs: torch.Tensor, noise: torch.Tensor) -> None:
        self.imgs, self.noise = imgs.clone(), noise.clone()  # the static inputs
        self.poison = torch.full((), float("nan"), device=imgs.device)
        flags = (self.state.skipped, self.state.bad_in_row, self.state.loss)
        saved = [t.clone() for t in flags]
        side = torch.cuda.Stream(imgs.device)
        side.wait_stream(torch.cuda.current_stream(imgs.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self._body()
        torch.cuda.current_stream(imgs.device).wait_stream(side)
        self.poison.fill_(0.0)
        self.optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._body()
        for t, v in zip(flags, saved):
            t.copy_(v)  # the warm-up's skips are not the run's

    def step(self, imgs: torch.Tensor, noise: torch.Tensor) -> None:
        if self.graph is None:
            self.capture(imgs, noise)
        if imgs.shape != self.imgs.shape or noise.shape != self.noise.shape:
            raise ConfigError(f"--cuda-graphs needs a fixed batch: captured {tuple(self.imgs.shape)}, "
                              f"got {tuple(imgs.shape)}")
        self.imgs.copy_(imgs, non_blocking=True)
        self.noise.copy_(noise, non_blocking=True)
        self.graph.replay()
