"""The pretraining configuration: every `fastmae train` flag, its default, and the
checks that turn a bad value into one clear ConfigError.

Two presets fill what the user leaves unset. Without --data, fastmae trains on the
built-in synthetic dataset with a micro ViT sized to finish in minutes on a laptop
CPU; with --data, the defaults are the paper's (ViT-B/16, 224 px, 400 epochs)."""
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..settings import ConfigError
from ..models.registry import CONFIGS

BUILTIN_PRESET = dict(model="mae_vit_micro_patch4", img_size=32, epochs=20, warmup_epochs=2,
                      blr=1.0e-3, batch_size=64)
PAPER_PRESET = dict(model="mae_vit_base_patch16", img_size=224, epochs=400, warmup_epochs=40,
                    blr=1.5e-4, batch_size=64)


@dataclass
class TrainConfig:
    data: str | None = None           # folder or file list; None = the built-in dataset
    model: str | None = None
    epochs: int | None = None
    batch_size: int | None = None     # per GPU / process
    accum_iter: int = 1
    blr: float | None = None          # lr = blr * effective batch / 256
    lr: float | None = None           # absolute lr, overrides blr
    min_lr: float = 0.0
    warmup_epochs: float | None = None
    weight_decay: float = 0.05
    mask_ratio: float = 0.75
    norm_pix_loss: bool = False
    img_size: int | None = None
    in_chans: int = 3
    loader: str = "auto"              # auto | dali | torch
    kernels: str = "auto"             # auto | triton | torch
    attn: str = "auto"                # auto | flash | sdpa | math
    compile: bool = False
    precision: str | None = None      # bf16 | fp16 | fp32; default bf16 on CUDA, fp32 on CPU
    num_workers: int | None = None
    output_dir: str = "./output_dir"
    resume: str | None = "auto"       # auto (continue if the output dir has a checkpoint) | PATH | none
    save_every: int = 1               # epochs between checkpoints
    save_every_steps: int = 0         # optimizer steps between extra mid-epoch checkpoints (0 = off)
    keep_last: int = 3
    picture_every: int = 0            # epochs between reconstruction pictures (0 = only at the end)
    clip_grad: float | None = None
    max_bad_steps: int = 20           # consecutive non-finite losses before the run stops
    max_steps: int | None = None      # stop early after this many optimizer steps
    log_every: int = 10
    seed: int = 0
    device: str = "auto"              # auto | cuda | cpu
    model_overrides: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def from_yaml(path: str) -> dict:
    """Flags from a YAML file (keys as the flag names, hyphen or underscore)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of flag names to values")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    out = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise ConfigError(f"config file {path}: unknown setting {key!r}")
        out[name] = value
    return out


def resolve(cfg: TrainConfig) -> TrainConfig:
    """Fill the preset defaults and validate; returns a new config."""
    preset = BUILTIN_PRESET if cfg.data is None else PAPER_PRESET
    filled = {k: (v if v is not None else preset.get(k)) for k, v in cfg.to_dict().items()}
    out = TrainConfig(**filled)
    validate(out)
    return out


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: TrainConfig) -> None:
    _check(cfg.model in CONFIGS, f"unknown model {cfg.model!r}; choose one of {', '.join(CONFIGS)}")
    patch = cfg.model_overrides.get("patch_size", CONFIGS[cfg.model]["patch_size"])
    _check(cfg.img_size > 0 and cfg.img_size % patch == 0,
           f"--img-size {cfg.img_size} is not a positive multiple of the patch size {patch} of {cfg.model}")
    _check(cfg.epochs >= 1, f"--epochs must be at least 1, got {cfg.epochs}")
    _check(cfg.batch_size >= 1, f"--batch-size must be at least 1, got {cfg.batch_size}")
    _check(cfg.accum_iter >= 1, f"--accum-iter must be at least 1, got {cfg.accum_iter}")
    _check(0.0 <= cfg.mask_ratio < 1.0, f"--mask-ratio must be in [0, 1), got {cfg.mask_ratio}")
    _check(cfg.blr > 0 and (cfg.lr is None or cfg.lr > 0), "the learning rate must be positive")
    _check(cfg.min_lr >= 0, f"--min-lr must be >= 0, got {cfg.min_lr}")
    _check(0 <= cfg.warmup_epochs <= cfg.epochs,
           f"--warmup-epochs must be between 0 and --epochs ({cfg.epochs}), got {cfg.warmup_epochs}")
    _check(cfg.weight_decay >= 0, f"--weight-decay must be >= 0, got {cfg.weight_decay}")
    _check(cfg.in_chans in (1, 3), f"--in-chans must be 1 or 3, got {cfg.in_chans}")
    _check(cfg.loader in ("auto", "dali", "torch"), f"--loader must be auto, dali or torch, got {cfg.loader!r}")
    _check(cfg.kernels in ("auto", "triton", "torch"),
           f"--kernels must be auto, triton or torch, got {cfg.kernels!r}")
    _check(cfg.attn in ("auto", "flash", "sdpa", "math"),
           f"--attn must be auto, flash, sdpa or math, got {cfg.attn!r}")
    _check(cfg.precision in (None, "bf16", "fp16", "fp32"),
           f"--precision must be bf16, fp16 or fp32, got {cfg.precision!r}")
    _check(cfg.device in ("auto", "cuda", "cpu"), f"--device must be auto, cuda or cpu, got {cfg.device!r}")
    _check(cfg.num_workers is None or cfg.num_workers >= 0, "--num-workers must be >= 0")
    _check(cfg.save_every >= 1 and cfg.save_every_steps >= 0 and cfg.keep_last >= 1,
           "--save-every and --keep-last must be at least 1")
    _check(cfg.max_steps is None or cfg.max_steps >= 1, "--max-steps must be at least 1")
    _check(cfg.clip_grad is None or cfg.clip_grad > 0, "--clip-grad must be positive")
    _check(cfg.log_every >= 1 and cfg.max_bad_steps >= 1, "--log-every and --max-bad-steps must be >= 1")
