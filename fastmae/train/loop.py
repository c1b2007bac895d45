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
from ..models.compiled import compile_enabled, compile_model
from ..models.registry import create_model
from ..settings import (CheckpointError, ConfigError, TrainingError, activation_dtype, autocast,
                        build_optimizer, resolve_device, resolve_precision)
from . import checkpoint, distributed
from . import graphs
from . import step as train_step
from .config import TrainConfig, resolve
from .reporting import Reporter
from .schedule import lr_at, set_lr


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
    if device.type == "cuda" and dist.enabled:  # torchrun: one GPU per process
        device = torch.device("cuda", dist.local_rank)
    precision = resolve_precision(cfg.precision, device)
    out = prepare_output_dir(cfg.output_dir) if dist.is_main else Path(cfg.output_dir)
    torch.manual_seed(cfg.seed + dist.rank)

    source = cfg.data if cfg.data is not None else fdata.builtin_dataset("train")
    loader = fdata.pretrain_loader(source, img_size=cfg.img_size, batch_size=cfg.batch_size,
                                   backend=cfg.loader, device=device, num_workers=cfg.num_workers,
                                   seed=cfg.seed, rank=dist.rank, world_size=dist.world_size,
                                   in_chans=cfg.in_chans, scale=(cfg.min_crop_scale, 1.0))
    if cfg.data is not None and dist.is_main and (hint := fdata.size_hint(loader.samples.paths, cfg.img_size,
                                                                          cfg.data)):
        log(hint)  # photos far larger than the crops: the one-time `fastmae data prepare` pays off
    steps_per_epoch = len(loader) // cfg.accum_iter
    if steps_per_epoch < 1:
        raise ConfigError(f"one optimizer step needs {cfg.accum_iter} batches but an epoch has only "
                          f"{len(loader)}; lower --accum-iter or --batch-size")

    model = create_model(cfg.model, img_size=cfg.img_size, in_chans=cfg.in_chans,
                         norm_pix_loss=cfg.norm_pix_loss, kernels=cfg.kernels, attn=cfg.attn,
                         **cfg.model_overrides).to(device)
    eff_batch = cfg.batch_size * cfg.accum_iter * dist.world_size
    base_lr = cfg.lr if cfg.lr is not None else cfg.blr * eff_batch / 256
    if cfg.cuda_graphs:
        graphs.check_supported(device, dist, precision, cfg.accum_iter)
        optimizer = graphs.build_optimizer(model, base_lr, cfg.weight_decay, device)
    else:
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
    compiled = compile_enabled(cfg.compile, device)
    run_model = compile_model(model, cfg.compile_mode, ddp_model) if compiled else ddp_model

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
    # Fails here, not mid-run; attention auto is timed here at this run's shapes.
    backends = model.backends(device, activation_dtype(precision), cfg.mask_ratio, cfg.batch_size)
    reporter = Reporter(out, cfg, model, dist, device, precision, total_steps, log)
    reporter.start(step, base_lr, eff_batch, {"loader": loader.backend, **backends,
                                              "compile": cfg.compile_mode if compiled else "off"})
    step_autocast = autocast(device, precision)
    # A resumed run's checkpoint already holds its current step.
    saved_step, ckpt_path = (step, found[0]) if found is not None else (None, None)
    # Device-side flags of the last step, read on logging and saving steps only.
    step_state = train_step.StepState.new(device)
    graphed = graphs.GraphedStep(model, run_model, optimizer, step_state, precision, cfg.clip_grad,
                                 cfg.mask_ratio, dist) if cfg.cuda_graphs else None
    loss_value = math.nan
    t_start, imgs_seen = time.perf_counter(), 0

    def save(epoch_done: int) -> None:
        nonlocal saved_step, ckpt_path
        ckpt_path, saved_step = save_state(epoch_done), step

    def read_state() -> tuple[bool, int]:
        """The host copy of the step flags (one sync): (last step skipped, skipped in a row)."""
        nonlocal loss_value
        skipped, bad_in_row, loss_value = step_state.read()
        return skipped, bad_in_row

    def check_bad(bad_in_row: int, epoch: int) -> None:
        """Stop once too many steps in a row were skipped; the weights still hold the last
        good state, which is saved first."""
        if bad_in_row >= cfg.max_bad_steps:
            save(epoch - 1)
            raise TrainingError(f"the loss was not finite for {bad_in_row} steps in a row "
                                f"(epoch {epoch}); the last good state is saved in {ckpt_path}. "
                                "Lower the learning rate or use --precision fp32")

    with _StopFlag() as stop:
        while step < total_steps:
            epoch = position["epoch"]
            batches = loader.iter_from(epoch, position["batch"])
            for window in _windows(batches, cfg.accum_iter):
                (graphs.set_lr if graphed is not None else set_lr)(
                    optimizer, lr_at(step / steps_per_epoch, lr=base_lr, min_lr=cfg.min_lr,
                                     warmup_epochs=cfg.warmup_epochs, epochs=cfg.epochs))
                window_loss = torch.zeros((), device=device)
                for i, imgs in enumerate(window):
                    noise = global_noise(noise_gen, imgs.shape[0], model.num_patches, dist, device)
                    last = i == len(window) - 1
                    if graphed is not None:  # forward, backward and optimizer step, replayed
                        graphed.step(imgs, noise)
                    else:
                        with ddp_model.no_sync() if dist.enabled and not last else contextlib.nullcontext():
                            with step_autocast:
                                loss, _, _ = run_model(imgs, cfg.mask_ratio, noise)
                            window_loss += train_step.backward(loss, cfg.accum_iter, scaler)
                    imgs_seen += imgs.shape[0] * dist.world_size
                    reporter.keep_pictures(imgs)
                position["batch"] += len(window)
                # A non-finite window is skipped on the device: no branch reads the loss here.
                if graphed is None:
                    train_step.optimizer_step(model, optimizer, scaler, cfg.clip_grad, window_loss,
                                              step_state, dist)
                step += 1
                log_now = reporter.log_due(step)
                save_now = bool(cfg.save_every_steps) and step % cfg.save_every_steps == 0
                skipped, bad_in_row = read_state() if log_now or save_now else (False, 0)
                reporter.step(step, epoch, loss_value, optimizer.param_groups[0]["lr"], imgs_seen,
                              time.perf_counter() - t_start, skipped=skipped)
                check_bad(bad_in_row, epoch)
                # SIGINT/SIGTERM set a host flag: one process acts on it at once; under DDP the
                # ranks agree on it at logging steps (a collective every step would sync the host).
                stop_now = stop.requested if not dist.enabled else log_now and bool(
                    distributed.all_reduce_max(torch.tensor(float(stop.requested), device=device),
                                               dist).item())
                if stop_now:
                    if not (log_now or save_now):
                        read_state()
                    save(epoch - 1)
                    reporter.finish(step, loss_value, imgs_seen, time.perf_counter() - t_start,
                                    ckpt_path, interrupted=True)
                    distributed.shutdown(dist)
                    return PretrainResult(out, ckpt_path, loss_value, step, reporter.img_per_s,
                                          reporter.history, interrupted=True)
                if save_now:
                    save(epoch - 1)
                if step >= total_steps:
                    break
            if len(loader) - position["batch"] < cfg.accum_iter:  # the epoch is complete
                position = {"epoch": epoch + 1, "batch": 0}
                if (epoch + 1) % cfg.save_every == 0 or step >= total_steps:
                    check_bad(read_state()[1], epoch)
                    save(epoch)
                reporter.epoch_end(epoch)
        check_bad(read_state()[1], position["epoch"])  # the final loss; a run ending on bad steps
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
