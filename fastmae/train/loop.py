"""The MAE pretraining loop: one direction of flow, data -> model -> optimizer ->
checkpoints and reports. Written to resume exactly: the data order, the augmentation
and the masking noise are pure functions of (seed, epoch, batch), and every RNG the
loop draws from is saved with the weights."""
import contextlib
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import __version__
from .. import data as fdata
from ..settings import resolve_device
from ..settings import CheckpointError, ConfigError, TrainingError
from ..models.registry import create_model
from . import checkpoint, distributed
from .config import TrainConfig, resolve
from .reporting import Reporter
from .schedule import lr_at, set_lr
from ..settings import build_optimizer

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class PretrainResult:
    output_dir: Path
    checkpoint: Path | None
    final_loss: float
    steps: int
    img_per_s: float
    history: list = field(default_factory=list)
    interrupted: bool = False


def prepare_output_dir(path: str) -> Path:
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{id(out)}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"cannot write to output dir {out}: {e.strerror or e}") from None
    return out


def global_noise(gen: torch.Generator, batch: int, num_patches: int, dist: distributed.DistInfo,
                 device: torch.device) -> torch.Tensor:
    """Masking noise of this rank's samples. Every rank draws the noise of the whole global
    batch and keeps its rows (the loader gives rank r the global positions r, r+W, ...), so
    N processes see exactly the noise one process would on the same global batch."""
    noise = torch.rand(batch * dist.world_size, num_patches, generator=gen, device=gen.device)
    return noise[dist.rank::dist.world_size].to(device, non_blocking=True)


class _StopFlag:
    """SIGINT/SIGTERM ask the loop to checkpoint and leave at the next step."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def pretrain(cfg: TrainConfig, log=print) -> PretrainResult:
    cfg = resolve(cfg)
    device = resolve_device(cfg.device)
    dist = distributed.init(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    precision = cfg.precision or ("bf16" if device.type == "cuda" else "fp32")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("--precision fp16 needs a CUDA GPU; use bf16 or fp32 on the CPU")
    out = prepare_output_dir(cfg.output_dir) if dist.is_main else Path(cfg.output_dir)
    torch.manual_seed(cfg.seed + dist.rank)

    source = cfg.data if cfg.data is not None else fdata.builtin_dataset("train")
    loader = fdata.pretrain_loader(source, img_size=cfg.img_size, batch_size=cfg.batch_size,
                                   backend=cfg.loader, device=device, num_workers=cfg.num_workers,
                                   seed=cfg.seed, rank=dist.rank, world_size=dist.world_size,
                                   in_chans=cfg.in_chans)
    steps_per_epoch = len(loader) // cfg.accum_iter
    if steps_per_epoch < 1:
        raise ConfigError(f"one optimizer step needs {cfg.accum_iter} batches but an epoch has only "
                          f"{len(loader)}; lower --accum-iter or --batch-size")

    model = create_model(cfg.model, img_size=cfg.img_size, in_chans=cfg.in_chans,
                         norm_pix_loss=cfg.norm_pix_loss, kernels=cfg.kernels, attn=cfg.attn,
                         **cfg.model_overrides).to(device)
    if cfg.compile:
        for blk in list(model.blocks) + list(model.decoder_blocks):
            blk.compile()
    eff_batch = cfg.batch_size * cfg.accum_iter * dist.world_size
    base_lr = cfg.lr if cfg.lr is not None else cfg.blr * eff_batch / 256
    optimizer = build_optimizer(model, base_lr, cfg.weight_decay, device)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    noise_gen = torch.Generator(device=device)
    noise_gen.manual_seed(cfg.seed)
    model_config = {**model.config, "img_size": list(model.config["img_size"])}

    step, position = 0, {"epoch": 0, "batch": 0}
    found = _find_resume(cfg, out, log)
    if found is not None:
        path, state = found
        if state.get("model_config") != model_config:
            raise CheckpointError(f"checkpoint {path} was made for another model configuration "
                                  f"({state.get('model_name')}); use another --output-dir")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        checkpoint.restore_rng(state["rng"], noise_gen)
        step, position = state["step"], state["data_position"]
        log(f"resumed from {path} at step {step} (epoch {position['epoch']}, batch {position['batch']})")

    ddp_model = model
    if dist.enabled:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    def save_state(epoch_done: int) -> Path | None:
        if not dist.is_main:
            return None
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch_done,
                 "scaler": scaler.state_dict() if scaler is not None else None, "args": cfg.to_dict(),
                 "step": step, "scheduler": {"base_lr": base_lr, "steps_per_epoch": steps_per_epoch},
                 "rng": checkpoint.rng_state(noise_gen), "data_position": dict(position),
                 "model_config": model_config, "model_name": cfg.model,
                 "fastmae_version": __version__}
        return checkpoint.save(state, out, cfg.keep_last)

    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    backends = model.backends(device, DTYPES[precision])  # fails here, not mid-run
    reporter = Reporter(out, cfg, model, dist, device, precision, total_steps, log)
    reporter.start(step, base_lr, eff_batch, {"loader": loader.backend, **backends})
    autocast = (torch.autocast(device.type, dtype=DTYPES[precision]) if precision != "fp32"
                else contextlib.nullcontext())
    # A resumed run's checkpoint already holds its current step.
    saved_step, ckpt_path = (step, found[0]) if found is not None else (None, None)
    loss_value, bad_in_row = math.nan, 0
    t_start, imgs_seen = time.perf_counter(), 0

    def save(epoch_done: int) -> None:
        nonlocal saved_step, ckpt_path
        ckpt_path, saved_step = save_state(epoch_done), step

    with _StopFlag() as stop:
        while step < total_steps:
            epoch = position["epoch"]
            batches = loader.iter_from(epoch, position["batch"])
            for window in _windows(batches, cfg.accum_iter):
                set_lr(optimizer, lr_at(step / steps_per_epoch, lr=base_lr, min_lr=cfg.min_lr,
                                        warmup_epochs=cfg.warmup_epochs, epochs=cfg.epochs))
                window_loss, finite = torch.zeros((), device=device), True
                for i, imgs in enumerate(window):
                    noise = global_noise(noise_gen, imgs.shape[0], model.num_patches, dist, device)
                    last = i == len(window) - 1
                    with ddp_model.no_sync() if dist.enabled and not last else contextlib.nullcontext():
                        with autocast:
                            loss, _, _ = ddp_model(imgs, cfg.mask_ratio, noise)
                        # One sync per micro-batch: every rank agrees on skipping and stopping.
                        flags = torch.stack([(~torch.isfinite(loss.detach())).float(),
                                             torch.tensor(float(stop.requested), device=device)])
                        bad, stop_now = distributed.all_reduce_mean(flags, dist).tolist()
                        if bad > 0:
                            finite = False
                            continue
                        scaled = loss / cfg.accum_iter
                        (scaler.scale(scaled) if scaler is not None else scaled).backward()
                        window_loss += loss.detach().float() / cfg.accum_iter
                    imgs_seen += imgs.shape[0] * dist.world_size
                    reporter.keep_pictures(imgs)
                position["batch"] += len(window)
                if finite:
                    _optimizer_step(model, optimizer, scaler, cfg.clip_grad)
                    loss_value = float(distributed.all_reduce_mean(window_loss, dist))
                    bad_in_row = 0
                else:
                    bad_in_row += 1
                optimizer.zero_grad(set_to_none=True)
                step += 1
                reporter.step(step, epoch, loss_value, optimizer.param_groups[0]["lr"], imgs_seen,
                              time.perf_counter() - t_start, skipped=not finite)
                if bad_in_row >= cfg.max_bad_steps:
                    save(epoch - 1)  # the weights still hold the last good state
                    raise TrainingError(f"the loss was not finite for {bad_in_row} steps in a row "
                                        f"(epoch {epoch}); the last good state is saved in {ckpt_path}. "
                                        "Lower the learning rate or use --precision fp32")
                if stop.requested or stop_now > 0:
                    save(epoch - 1)
                    reporter.finish(step, loss_value, imgs_seen, time.perf_counter() - t_start,
                                    ckpt_path, interrupted=True)
                    distributed.shutdown(dist)
                    return PretrainResult(out, ckpt_path, loss_value, step, reporter.img_per_s,
                                          reporter.history, interrupted=True)
                if cfg.save_every_steps and step % cfg.save_every_steps == 0:
                    save(epoch - 1)
                if step >= total_steps:
                    break
            if len(loader) - position["batch"] < cfg.accum_iter:  # the epoch is complete
                position = {"epoch": epoch + 1, "batch": 0}
                if (epoch + 1) % cfg.save_every == 0 or step >= total_steps:
                    save(epoch)
                reporter.epoch_end(epoch)
        if saved_step != step:
            save(position["epoch"] - 1)

    reporter.finish(step, loss_value, imgs_seen, time.perf_counter() - t_start, ckpt_path,
                    interrupted=False)
    distributed.shutdown(dist)
    return PretrainResult(out, ckpt_path, loss_value, step, reporter.img_per_s, reporter.history)


def _windows(batches, size: int):
    """Groups of `size` batches (one optimizer step each); a partial group is dropped."""
    window = []
    for imgs in batches:
        window.append(imgs)
        if len(window) == size:
            yield window
            window = []


def _optimizer_step(model, optimizer, scaler, clip_grad):
    if scaler is not None:
        scaler.unscale_(optimizer)
    if clip_grad is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def _find_resume(cfg: TrainConfig, out: Path, log):
    if cfg.resume in (None, "none"):
        if checkpoint.numbered(out):
            raise ConfigError(f"output dir {out} already holds checkpoints; use --resume auto to "
                              "continue that run, or another --output-dir")
        return None
    if cfg.resume == "auto":
        return checkpoint.latest_good(out, log=log)
    path = Path(cfg.resume)
    return path, checkpoint.load(path)
