"""Pretraining-step throughput of the contenders, measured the same way in one process.

Every contender is built from the same weights, warmed up, then timed in rounds:
each round runs `steps` steps of every contender in turn (the order rotates from
round to round), so drifts in clock speed or temperature fall on all of them alike.
Steps are timed with CUDA events on a GPU and perf_counter on a CPU; the figures
are the median step over all timed steps, with the quartiles and extremes as
spread. `run` returns the results dict that `fastmae bench --json` writes."""
import datetime
import gc
import importlib.metadata
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .. import __version__
from ..models.registry import CONFIGS
from ..progress import Progress
from ..settings import (BackendUnavailable, ConfigError, DataError, amp_dtype, check_choice, resolve_device,
                        resolve_precision)
from . import contenders as cont
from ..perf.flops import forward_flops, named_config
from .memory import PeakMemory
from ..perf.peaks import measure_matmul_tflops, spec_peak_tflops
MAX_BATCH_LIMIT = 1 << 16


@dataclass
class BenchConfig:
    model: str = "mae_vit_base_patch16"
    batch_size: int = 64
    img_size: int = 224
    mask_ratio: float = 0.75
    precision: str = "auto"
    steps: int = 10
    warmup: int = 3
    rounds: int = 3
    contenders: tuple = cont.NAMES
    kernels: str = "auto"
    attn: str = "auto"
    device: str = "auto"
    norm_pix_loss: bool = False
    max_batch: bool = False
    data: str | None = None
    loader: str = "auto"
    peak_tflops: float | None = None
    seed: int = 0
    extra: dict = field(default_factory=dict)


def check(cfg: BenchConfig) -> tuple[torch.device, cont.Setup]:
    """Validate everything a user can get wrong before any model is built."""
    if cfg.model not in CONFIGS:
        raise ConfigError(f"unknown model {cfg.model!r}; choose one of {', '.join(CONFIGS)}")
    for flag, value, low in (("--batch-size", cfg.batch_size, 1), ("--steps", cfg.steps, 1),
                             ("--warmup", cfg.warmup, 0), ("--rounds", cfg.rounds, 1),
                             ("--img-size", cfg.img_size, 1)):
        if value < low:
            raise ConfigError(f"{flag} must be at least {low}, got {value}")
    patch = CONFIGS[cfg.model]["patch_size"]
    if cfg.img_size % patch:
        raise ConfigError(f"--img-size {cfg.img_size} is not a multiple of {cfg.model}'s patch size {patch}")
    if not 0.0 <= cfg.mask_ratio < 1.0:
        raise ConfigError(f"--mask-ratio must be in [0, 1), got {cfg.mask_ratio}")
    if cfg.peak_tflops is not None and not cfg.peak_tflops > 0:
        raise ConfigError(f"--peak-tflops must be positive, got {cfg.peak_tflops}")
    check_choice("loader", cfg.loader)
    if cfg.loader != "auto" and cfg.data is None:
        raise ConfigError("--loader chooses how --data is read; give --data PATH too")
    cont.check_names(list(cfg.contenders))
    device = resolve_device(cfg.device)
    if cfg.data is not None:
        from ..data import scan
        scan(cfg.data)  # a missing or empty source fails here, before any search or build
    if cfg.max_batch and device.type != "cuda":
        raise ConfigError("--max-batch searches the largest batch that fits in GPU memory; "
                          "it needs a CUDA device (this run is on CPU)")
    setup = cont.Setup(cfg.model, cfg.img_size, cfg.mask_ratio, resolve_precision(cfg.precision, device),
                       device, cfg.norm_pix_loss, cfg.kernels, cfg.attn, cfg.seed)
    if any(n.startswith("fastmae") for n in cfg.contenders):
        cont.check_backends(setup)
    return device, setup


# ---------------------------------------------------------------- environment

def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    n = torch.get_num_threads()
    return f"CPU: {cpu} ({n} thread{'s' if n > 1 else ''})"


def _dist_version(*names: str) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def versions() -> dict:
    return {
        "fastmae": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "triton": _dist_version("triton"),
        "transformers": _dist_version("transformers"),
        "timm": _dist_version("timm"),
        "flash_attn": _dist_version("flash-attn", "flash_attn", "flash-attn-4"),
        "nvidia_dali": _dist_version("nvidia-dali-cuda130", "nvidia-dali-cuda120", "nvidia-dali-cuda110"),
        "platform": platform.platform(),
    }


# ---------------------------------------------------------------- inputs

class SyntheticBatches:
    """Random images already on the device (two batches, alternated): the step alone."""
    kind = "synthetic"

    def __init__(self, batch: int, img_size: int, device: torch.device, in_chans: int = 3):
        self.batches = [torch.randn(batch, in_chans, img_size, img_size, device=device) for _ in range(2)]
        self.i = 0

    def next(self) -> torch.Tensor:
        self.i += 1
        return self.batches[self.i % 2]


class LoaderBatches:
    """Batches from fastmae.data.pretrain_loader, epoch after epoch: data loading in the step."""

    def __init__(self, source: str, backend: str, batch: int, img_size: int, device: torch.device, seed: int):
        from ..data import pretrain_loader
        self.loader = pretrain_loader(source, img_size=img_size, batch_size=batch, backend=backend,
                                      device=str(device), seed=seed, dtype=torch.float32)
        if len(self.loader) == 0:
            raise DataError(f"--data {source} has fewer images than one batch of {batch}")
        self.kind = f"{self.loader.backend} loader"
        self.epoch = 0
        self.it = iter(self.loader.iter_from(0))

    def next(self) -> torch.Tensor:
        try:
            return next(self.it)
        except StopIteration:
            self.epoch += 1
            self.loader.set_epoch(self.epoch)
            self.it = iter(self.loader.iter_from(self.epoch))
            return next(self.it)


def make_batches(cfg: BenchConfig, name: str, device: torch.device):
    if cfg.data is None:
        return SyntheticBatches(cfg.batch_size, cfg.img_size, device)
    # The fast pipeline reads with the chosen loader; the baselines with the torchvision one.
    backend = cfg.loader if name.startswith("fastmae") else "torch"
    return LoaderBatches(cfg.data, backend, cfg.batch_size, cfg.img_size, device, cfg.seed)


# ---------------------------------------------------------------- timing

def _out_of_memory(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e)


def time_steps(c: cont.Contender, batches, n: int, device: torch.device, bar=None) -> list[float]:
    """Milliseconds of each of n steps (the next batch is fetched inside the timed step)."""
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(n)]
        for start, end in events:
            start.record()
            c.step(batches.next())
            end.record()
            if bar is not None:
                bar.update()
        torch.cuda.synchronize(device)
        return [start.elapsed_time(end) for start, end in events]
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        c.step(batches.next())
        times.append((time.perf_counter() - t0) * 1e3)
        if bar is not None:
            bar.update()
    return times


def _kernel_label(calls_before: dict, calls_after: dict) -> tuple[str, dict]:
    """Which op implementations ran between two snapshots of fastmae.ops.dispatch.calls."""
    ran = {k: calls_after[k] - calls_before.get(k, 0) for k in calls_after
           if calls_after[k] > calls_before.get(k, 0)}
    impls = sorted({k.split(":", 1)[1] for k in ran})
    return ("+".join(impls) if impls else "none"), ran


def largest_fitting(fits, start: int, limit: int = MAX_BATCH_LIMIT) -> tuple[int, int | None]:
    """(largest batch b with fits(b), smallest failing batch seen or None) for a
    monotone fits(): doubling from `start`, then bisection until the two are within
    1/64 of each other. 0 when even batch 1 does not fit."""
    lo, hi, b = 0, None, start
    while hi is None:
        if b > limit:
            return lo, None
        if fits(b):
            lo, b = b, b * 2
        else:
            hi = b
    while hi - lo > max(1, hi // 64):
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo, hi


def _cuda_failure(e: BaseException) -> bool:
    """Out of memory, or another failure of the CUDA stack (driver, cuBLAS, cuDNN, a launch)."""
    accel = getattr(torch, "AcceleratorError", None)
    return (_out_of_memory(e) or (accel is not None and isinstance(e, accel))
            or any(k in str(e) for k in ("CUDA", "cuDNN", "CUDNN", "cuBLAS", "CUBLAS")))


class _SearchEnded(Exception):
    """A CUDA failure other than out-of-memory during the search: no larger batch is tried."""


def search_max_batch(name: str, setup: cont.Setup, base, start: int, log) -> dict:
    """Largest batch whose training step fits in GPU memory for one contender, the
    only one resident. A first step at a small batch allocates the optimizer state, so
    one step per try then sees the whole footprint (state + gradients + activations).

    Near the memory limit a library can fail in other ways than out-of-memory (cuDNN or
    cuBLAS workspace allocation, a launch error that poisons the context): any CUDA failure
    during the search ends it, the last batch that ran is the answer, and the failure is
    recorded (max_batch_ended_by). A failure in the first small step still raises."""
    c = cont.build(name, setup, base)
    c.step(torch.randn(min(start, 8), 3, setup.img_size, setup.img_size, device=setup.device))
    tries, ran, ended = [], [], {}

    def fits(batch: int) -> bool:
        oom = False
        try:
            imgs = torch.randn(batch, 3, setup.img_size, setup.img_size, device=setup.device)
            c.step(imgs)
            torch.cuda.synchronize(setup.device)
        except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
            if not _cuda_failure(e):
                raise
            oom = True
            if not _out_of_memory(e):
                ended.update(batch=batch, error=f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}")
        imgs = None
        try:
            c.optimizer.zero_grad(set_to_none=True)
            gc.collect()
            torch.cuda.empty_cache()
        except RuntimeError:  # after a sticky CUDA error the clean-up fails as well
            pass
        tries.append(batch)
        if ended:
            log(f"  max-batch {name}: batch {batch} failed ({ended['error']}); search ends at "
                f"{max(ran, default=0)}")
            raise _SearchEnded
        log(f"  max-batch {name}: batch {batch} {'out of memory' if oom else 'fits'}")
        if not oom:
            ran.append(batch)
        return not oom

    try:
        best, first_oom = largest_fitting(fits, start)
    except _SearchEnded:
        best, first_oom = max(ran, default=0), ended["batch"]
    c = None  # drop the contender's weights and optimizer state before the next one
    try:
        gc.collect()
        torch.cuda.empty_cache()
    except RuntimeError:
        pass
    out = {"max_batch": best, "max_batch_first_oom": first_oom, "max_batch_tries": len(tries)}
    if ended:
        out["max_batch_ended_by"] = dict(ended)
    return out


def _spread(values: np.ndarray) -> dict:
    p25, p75 = np.percentile(values, [25, 75])
    return {"p25": float(p25), "p75": float(p75), "min": float(values.min()), "max": float(values.max())}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(cfg: BenchConfig, log=_log) -> dict:
    device, setup = check(cfg)
    # Other processes on the machine skew CPU timings: recorded beside them.
    load_1m = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    names = list(cfg.contenders)
    dev_name = device_name(device)
    model_cfg = named_config(cfg.model, cfg.img_size)
    fl = forward_flops(model_cfg, cfg.mask_ratio)
    flops_per_img = 3 * fl["forward"]

    peak, peak_source = cfg.peak_tflops, "user (--peak-tflops)"
    if peak is None:
        peak, peak_source = spec_peak_tflops(dev_name, setup.precision), "datasheet"
        if peak is None:
            peak_source = None
    matmul_tflops = None
    if device.type == "cuda" and amp_dtype(setup.precision) is not None:
        matmul_tflops = measure_matmul_tflops(device, amp_dtype(setup.precision))

    base = cont.base_model(setup)
    max_batch = {}
    if cfg.max_batch:
        log(f"searching the largest batch per contender on {dev_name}")
        for name in names:
            max_batch[name] = search_max_batch(name, setup, base, cfg.batch_size, log)

    from ..ops import dispatch
    built, batches, kernel_calls, left_out = {}, {}, {}, {}
    for name in names:  # inputs first: a bad --data fails before any model is built
        batches[name] = make_batches(cfg, name, device)
    log(f"building {', '.join(names)}: {cfg.model}, batch {cfg.batch_size}, {cfg.img_size}px, "
        f"mask {cfg.mask_ratio}, {setup.precision}, on {dev_name}")
    for name in names:
        built[name] = cont.build(name, setup, base)
    del base
    memory = PeakMemory(device)
    times = {n: [] for n in names}
    peaks = {n: None for n in names}
    total = len(names) * (cfg.warmup + cfg.rounds * cfg.steps)
    with Progress(total, "bench", stream=sys.stderr) as bar:
        for name in names:  # warm-up: allocator, cuDNN/cuBLAS heuristics, torch.compile, autotuning
            before = dict(dispatch.calls)
            try:
                time_steps(built[name], batches[name], cfg.warmup, device, bar)
                if cfg.warmup == 0:
                    time_steps(built[name], batches[name], 1, device)
            except Exception as e:  # noqa: BLE001 - a compile failure must not cost the others
                if name in cont.COMPILED and not _out_of_memory(e):
                    # torch.compile is the newest, least proven part of a run: a compiled
                    # contender that fails is left out, said on screen and in the JSON.
                    left_out[name] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}" \
                        if str(e).strip() else type(e).__name__
                    log(f"  {name} failed in warm-up and is left out: {left_out[name]}")
                    built[name] = None
                    continue
                if isinstance(e, (torch.cuda.OutOfMemoryError, RuntimeError)):
                    _raise_if_oom(e, name, cfg)
                raise
            kernel_calls[name] = _kernel_label(before, dict(dispatch.calls))
        names = [n for n in names if n not in left_out]
        if not names:
            raise BackendUnavailable("no contender ran: " + "; ".join(f"{n}: {why}"
                                                                      for n, why in left_out.items()))
        for r in range(cfg.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                c = built[name]
                memory.start()
                try:
                    times[name] += time_steps(c, batches[name], cfg.steps, device, bar)
                except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
                    _raise_if_oom(e, name, cfg)
                    raise
                used = memory.stop(c.resident_bytes())
                if used is not None:
                    peaks[name] = max(peaks[name] or 0, used)

    results = []
    for name in names:
        c = built[name]
        ms = np.asarray(times[name])
        step_ms = float(np.median(ms))
        img_per_s = cfg.batch_size / (step_ms / 1e3)
        tflops = flops_per_img * img_per_s / 1e12
        loss = float(c.last_loss) if c.last_loss is not None else None
        ran, calls = kernel_calls[name]
        row = {
            "name": name,
            "img_per_s": img_per_s,
            "img_per_s_spread": {k: cfg.batch_size / (v / 1e3) for k, v in _spread(ms).items()},
            "step_ms": step_ms,
            "step_ms_spread": _spread(ms),
            "steps_timed": int(ms.size),
            "peak_mem_mb": None if peaks[name] is None else peaks[name] / 2**20,
            "peak_mem_kind": memory.kind,
            "model_tflops": tflops,
            "mfu": tflops / peak if peak else None,
            "attn_backend": c.attn_backend,
            "attn": dict(c.attn),  # what each module runs, resolved (auto: measured on CUDA)
            "kernels": (ran if name.startswith("fastmae") and ran != "none" else c.kernels),
            "kernel_calls": calls,
            "compile": c.compile,
            "input": batches[name].kind,
            "params_m": sum(p.numel() for p in c.model.parameters()) / 1e6,
            "final_loss": loss if loss is not None and math.isfinite(loss) else None,
        }
        row.update(max_batch.get(name, {}))
        results.append(row)
    ref = next((r for r in results if r["name"] == "reference"), None)
    for row in results:
        row["speedup_vs_reference"] = row["img_per_s"] / ref["img_per_s"] if ref else None

    return {
        "device": dev_name,
        "device_type": device.type,
        "versions": versions(),
        "config": {
            **{k: v for k, v in asdict(cfg).items() if k not in ("extra", "contenders")},
            "contenders": names, "precision": setup.precision, "device": str(device),
            "model_config": {k: list(v) if isinstance(v, tuple) else v for k, v in model_cfg.items()},
            "flops_per_img": flops_per_img, "forward_flops_per_img": fl,
            "peak_tflops": peak, "peak_tflops_source": peak_source,
            "mfu_basis": (f"model FLOPs per step (3 x the counted forward) per second over the {peak_source} "
                          f"{setup.precision} peak of {peak} TFLOP/s" if peak else
                          "no MFU: no known peak for this device (give --peak-tflops)"),
            "measured_matmul_tflops": matmul_tflops,
            "optimizer": ("AdamW(lr=1.5e-4, betas=(0.9, 0.95), wd=0.05 except biases, norms, tokens "
                          "and position embeddings, fused kernel on CUDA and CPU)"),
            "timer": "cuda events" if device.type == "cuda" else "time.perf_counter",
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "load_average_1m_at_start": load_1m,
            "load_average_1m_at_end": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            **cfg.extra,
        },
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": None,
        "results": results,
        "left_out": left_out,  # contender -> why it did not run
    }


def _raise_if_oom(e: BaseException, name: str, cfg: BenchConfig) -> None:
    if _out_of_memory(e):
        raise ConfigError(f"contender {name} ran out of GPU memory at batch {cfg.batch_size}; use a "
                          f"smaller --batch-size (--max-batch finds the largest that fits)") from None
