"""The pretraining configuration: every `fastmae train` flag, its default, and the
checks that turn a bad value into one clear ConfigError.

Two presets fill what the user leaves unset. Without --data, fastmae trains on the
built-in synthetic dataset with a micro ViT sized to finish in minutes on a laptop
CPU; with --data, the defaults are the paper's (ViT-B/16, 224 px, 400 epochs)."""
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..models.registry import CONFIGS
from ..settings import ConfigError, check_choice, resolve_device

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
    warmup_epochs: float | None = None  # unset: the preset's, at most 10% of --epochs
    weight_decay: float = 0.05
    mask_ratio: float = 0.75
    min_crop_scale: float = 0.2       # RandomResizedCrop area range (min, 1): MAE's 0.2; near 1 for a fixed camera
    norm_pix_loss: bool = False
    img_size: int | None = None
    in_chans: int = 3
    loader: str = "auto"              # settings.LOADERS
    kernels: str = "auto"             # settings.KERNELS
    attn: str = "auto"                # settings.ATTENTION
    compile: str = "auto"             # settings.COMPILE: auto = on for CUDA, off on the CPU
    compile_mode: str = "model"       # settings.COMPILE_MODES: the whole model or each block
    cuda_graphs: bool = False         # capture the whole step in a CUDA graph (train/graphs.py)
    precision: str | None = None      # settings.PRECISIONS; unset: bf16 on CUDA, fp32 on CPU
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
    device: str = "auto"              # auto, cpu, cuda or cuda:N
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


def default_warmup(preset_warmup: float, epochs: int) -> float:
    """The warm-up a run gets when --warmup-epochs is not given: the preset's, but never more
    than 10% of the run, so a short run (--epochs 1) is valid and still warms up."""
    return min(preset_warmup, 0.1 * epochs)


def resolve(cfg: TrainConfig) -> TrainConfig:
    """Fill the preset defaults and validate; returns a new config."""
    preset = BUILTIN_PRESET if cfg.data is None else PAPER_PRESET
    filled = {k: (v if v is not None else preset.get(k)) for k, v in cfg.to_dict().items()}
    if cfg.warmup_epochs is None and isinstance(filled["epochs"], (int, float)):
        filled["warmup_epochs"] = default_warmup(preset["warmup_epochs"], filled["epochs"])
    if isinstance(filled["compile"], bool):  # `compile: true` in a YAML file of an older run
        filled["compile"] = "on" if filled["compile"] else "off"
    out = TrainConfig(**filled)
    validate(out)
    return out


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _check_flag(flag: str, check, value) -> None:
    """A settings check, its message naming the flag."""
    try:
        check(value)
    except ConfigError as e:
        raise ConfigError(str(e) if str(e).startswith(flag) else f"{flag}: {e}") from None


def validate(cfg: TrainConfig) -> None:
    _check(cfg.model in CONFIGS, f"unknown model {cfg.model!r}; choose one of {', '.join(CONFIGS)}")
    patch = cfg.model_overrides.get("patch_size", CONFIGS[cfg.model]["patch_size"])
    _check(cfg.img_size > 0 and cfg.img_size % patch == 0,
           f"--img-size {cfg.img_size} is not a positive multiple of the patch size {patch} of {cfg.model}")
    _check(cfg.epochs >= 1, f"--epochs must be at least 1, got {cfg.epochs}")
    _check(cfg.batch_size >= 1, f"--batch-size must be at least 1, got {cfg.batch_size}")
    _check(cfg.accum_iter >= 1, f"--accum-iter must be at least 1, got {cfg.accum_iter}")
    _check(0.0 <= cfg.mask_ratio < 1.0, f"--mask-ratio must be in [0, 1), got {cfg.mask_ratio}")
    _check(0.0 < cfg.min_crop_scale <= 1.0, f"--min-crop-scale must be in (0, 1], got {cfg.min_crop_scale}")
    _check(cfg.blr > 0 and (cfg.lr is None or cfg.lr > 0), "the learning rate must be positive")
    _check(cfg.min_lr >= 0, f"--min-lr must be >= 0, got {cfg.min_lr}")
    _check(0 <= cfg.warmup_epochs <= cfg.epochs,
           f"--warmup-epochs must be between 0 and --epochs ({cfg.epochs}), got {cfg.warmup_epochs}")
    _check(cfg.weight_decay >= 0, f"--weight-decay must be >= 0, got {cfg.weight_decay}")
    _check(cfg.in_chans in (1, 3), f"--in-chans must be 1 or 3, got {cfg.in_chans}")
    for name in ("loader", "kernels", "attn", "compile", "compile_mode"):
        _check_flag("--" + name.replace("_", "-"), lambda v, name=name: check_choice(name, v),
                    getattr(cfg, name))
    _check_flag("--precision", lambda v: check_choice("precision", v or "auto"), cfg.precision)
    _check_flag("--device", resolve_device, cfg.device)
    _check(cfg.num_workers is None or cfg.num_workers >= 0, "--num-workers must be >= 0")
    _check(cfg.save_every >= 1 and cfg.save_every_steps >= 0 and cfg.keep_last >= 1,
           "--save-every and --keep-last must be at least 1")
    _check(cfg.max_steps is None or cfg.max_steps >= 1, "--max-steps must be at least 1")
    _check(cfg.clip_grad is None or cfg.clip_grad > 0, "--clip-grad must be positive")
    _check(cfg.log_every >= 1 and cfg.max_bad_steps >= 1, "--log-every and --max-bad-steps must be >= 1")
