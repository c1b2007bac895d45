"""The implementations a benchmark compares, each as a model + AdamW + one training step.

- fastmae:   fastmae.create_model with the requested kernels / attention, eager.
- fastmae-compiled:        the same model, torch.compile of the whole model.
- fastmae-compiled-blocks: the same model, each transformer block compiled on its own.
- reference: fastmae.reference (plain eager PyTorch, SDPA attention).
- hf:        transformers ViTMAEForPreTraining with attn_implementation="sdpa".

All three start from the same weights and run the same step: forward (autocast to
the benchmark precision), backward, the training loop's AdamW (settings.build_optimizer:
fused on CUDA), gradients freed. Only the model differs, so a ratio of step times is a
ratio of models."""
import copy
import functools
import importlib.util
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

from .. import reference
from ..apply import hf_attention_modules
from ..models import attention, create_model
from ..models.compiled import compile_model
from ..ops import dispatch
from ..settings import BackendUnavailable, ConfigError, activation_dtype, autocast, build_optimizer

NAMES = ("fastmae", "fastmae-compiled", "fastmae-compiled-blocks", "reference", "hf")
COMPILED = {"fastmae-compiled": "model", "fastmae-compiled-blocks": "blocks"}  # name -> compile mode
LR, WEIGHT_DECAY = 1.5e-4, 0.05  # the official MAE pretraining recipe
SDPA_BOTH = {"encoder": "sdpa", "decoder": "sdpa"}  # the baselines call SDPA, torch picks the kernel


@dataclass
class Setup:
    """What every contender shares."""
    model: str
    img_size: int
    mask_ratio: float
    precision: str  # bf16 | fp16 | fp32 (already resolved for the device)
    device: torch.device
    norm_pix_loss: bool = False
    kernels: str = "auto"
    attn: str = "auto"
    seed: int = 0


@dataclass
class Contender:
    name: str
    model: nn.Module
    loss_fn: Callable[[torch.Tensor], torch.Tensor]  # imgs -> scalar loss
    optimizer: torch.optim.Optimizer
    precision: str  # resolved: bf16 | fp16 | fp32
    attn: dict  # what attention runs: {"encoder": ..., "decoder": ...}, resolved
    kernels: str
    compile: str = "off"  # off | model | blocks
    scaler: torch.amp.GradScaler | None = None
    last_loss: torch.Tensor | None = field(default=None, repr=False)

    def step(self, imgs: torch.Tensor) -> None:
        """One pretraining step. Does not synchronise: the caller times it."""
        with autocast(imgs.device, self.precision):
            loss = self.loss_fn(imgs)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.last_loss = loss.detach()

    @property
    def attn_backend(self) -> str:
        """One label: the backend, or "encoder/decoder" when they differ."""
        enc, dec = self.attn["encoder"], self.attn["decoder"]
        return enc if enc == dec else f"{enc}/{dec}"

    def resident_bytes(self) -> int:
        """Bytes held between steps: parameters, buffers and optimizer state."""
        seen, total = set(), 0
        tensors = list(self.model.parameters()) + list(self.model.buffers())
        for state in self.optimizer.state.values():
            tensors += [v for v in state.values() if torch.is_tensor(v)]
        for t in tensors:
            if t.data_ptr() not in seen and t.device.type != "meta":
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
        return total


def hf_available() -> bool:
    return importlib.util.find_spec("transformers") is not None


def default_names(device: torch.device) -> list[str]:
    """Every contender that can run here: the compiled ones on CUDA only (on the CPU the
    compile time dwarfs a short benchmark), hf when transformers is installed."""
    return [n for n in NAMES if (n != "hf" or hf_available())
            and (n not in COMPILED or device.type == "cuda")]


def check_names(names: list[str]) -> list[str]:
    for n in names:
        if n not in NAMES:
            raise ConfigError(f"unknown contender {n!r}; choose from {', '.join(NAMES)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"contender listed twice in {','.join(names)}")
    if not names:
        raise ConfigError("no contenders given")
    if "hf" in names and not hf_available():
        raise BackendUnavailable("contender hf needs the transformers package "
                                 "(pip install transformers), or leave hf out of --contenders")
    return names


def _probe(setup: Setup) -> torch.Tensor:
    """A tiny tensor in the dtype the model's matmuls will see, to resolve backends."""
    return torch.zeros(1, 1, device=setup.device, dtype=activation_dtype(setup.precision))


def check_backends(setup: Setup) -> tuple[str, str]:
    """(attention asked for, kernels) of the fastmae contenders, or the error that a
    requested one cannot run here. What attention each module runs is resolved per model
    (MaskedAutoencoderViT.backends), once it is built."""
    attention.check_backend(setup.attn)
    probe = _probe(setup)
    attention.resolve(setup.attn, probe)
    return setup.attn, dispatch.resolve(setup.kernels, probe)


def _finish(name, model, loss_fn, setup, attn, kernels, compile_mode="off") -> Contender:
    # The training loop's optimizer recipe, the same for every contender.
    optimizer = build_optimizer(model, LR, WEIGHT_DECAY, setup.device)
    scaler = torch.amp.GradScaler("cuda") if setup.precision == "fp16" else None
    model.train()
    return Contender(name, model, loss_fn, optimizer, setup.precision, attn, kernels, compile_mode, scaler)


def base_model(setup: Setup):
    """The fastmae model on CPU, seeded: the weights every contender starts from."""
    torch.manual_seed(setup.seed)
    return create_model(setup.model, img_size=setup.img_size, norm_pix_loss=setup.norm_pix_loss,
                        kernels=setup.kernels, attn=setup.attn)


def build_fastmae(setup: Setup, base=None, name: str = "fastmae") -> Contender:
    _, kernels = check_backends(setup)
    model = (copy.deepcopy(base) if base is not None else base_model(setup)).to(setup.device)
    # What each module's attention resolves to at this run's shapes (measured for auto on CUDA).
    backends = model.backends(setup.device, activation_dtype(setup.precision), setup.mask_ratio)
    attn = {"encoder": backends["attn"], "decoder": backends["decoder_attn"]}
    mode = COMPILED.get(name, "off")
    run = compile_model(model, mode) if mode != "off" else model
    ratio = setup.mask_ratio
    return _finish(name, model, lambda imgs: run(imgs, ratio)[0], setup, attn, kernels, mode)


def build_reference(setup: Setup, base=None) -> Contender:
    model = reference.create_reference(setup.model, img_size=setup.img_size,
                                       norm_pix_loss=setup.norm_pix_loss)
    if base is not None:
        model.load_state_dict(base.state_dict(), strict=True)
    model = model.to(setup.device)
    ratio = setup.mask_ratio
    return _finish("reference", model, lambda imgs: model(imgs, ratio)[0], setup, SDPA_BOTH, "torch")


def hf_attention_impls(model: nn.Module) -> dict[str, str]:
    """The attention implementation each ViTMAE self-attention of a Hugging Face model runs,
    by module name. transformers 5 and 4.48+ read it from the module's config at call time;
    4.40-4.47 chose the class at construction (ViTMAESdpaSelfAttention for SDPA)."""
    impls = {}
    for name, module, _ in hf_attention_modules(model):
        impl = getattr(getattr(module, "config", None), "_attn_implementation", None)
        impls[name] = impl or ("sdpa" if "Sdpa" in type(module).__name__ else "eager")
    return impls


def build_hf(setup: Setup, base=None) -> Contender:
    if not hf_available():
        raise BackendUnavailable("contender hf needs the transformers package (pip install transformers)")
    try:
        from ..interop import to_hf_vitmae
    except ImportError as e:
        raise BackendUnavailable(f"contender hf needs fastmae.interop.to_hf_vitmae ({e})") from e
    model = to_hf_vitmae(base if base is not None else base_model(setup), mask_ratio=setup.mask_ratio)
    model.config.mask_ratio = setup.mask_ratio
    model.config.norm_pix_loss = setup.norm_pix_loss
    impls = hf_attention_impls(model)
    if set(impls.values()) != {"sdpa"}:
        # transformers 5 and 4.48+ read the implementation from each layer's config at call
        # time; the decoder's layers hold their own copy of the config.
        for _, module, _ in hf_attention_modules(model):
            if getattr(module, "config", None) is not None:
                module.config._attn_implementation = "sdpa"
        impls = hf_attention_impls(model)
    if set(impls.values()) != {"sdpa"}:
        import transformers
        other = sorted(name for name, impl in impls.items() if impl != "sdpa")
        raise BackendUnavailable(f"transformers {transformers.__version__} runs ViTMAE attention "
                                 f"{', '.join(other[:3])} as {sorted(set(impls.values()))}, not SDPA")
    model = model.to(setup.device)
    return _finish("hf", model, lambda imgs: model(pixel_values=imgs).loss, setup, SDPA_BOTH, "torch")


BUILDERS = {"fastmae": build_fastmae, "reference": build_reference, "hf": build_hf,
            **{n: functools.partial(build_fastmae, name=n) for n in COMPILED}}


def build(name: str, setup: Setup, base=None) -> Contender:
    """A contender by name; `base` (a fastmae model on CPU) gives the shared weights."""
    return BUILDERS[name](setup, base)
