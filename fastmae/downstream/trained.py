"""A trained classifier read back from its checkpoint: `fastmae finetune`'s
checkpoint-best.pth / checkpoint-last.pth (the whole ViT with fc_norm or norm and the head)
or `fastmae linprobe`'s probe-best.pth (the BatchNorm + Linear probe; its frozen encoder
comes from the pretrained checkpoint the file names). Both give one module that maps
normalised images to logits, the class names, and the evaluation transform the model was
measured with - what `predict` runs and `export` writes out."""
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from ..data.transforms import EvalTransform
from ..settings import CheckpointError
from .classifier import VisionTransformer
from .features import frozen_encoder

# How the head sees the encoder: avg = fc_norm(mean of patch tokens) (fine-tuning default),
# token = norm -> cls token, probe-cls / probe-avg = frozen norm -> cls / patch mean -> probe.
POOLS = ("avg", "token", "probe-cls", "probe-avg")


class ProbeClassifier(nn.Module):
    """A frozen encoder's features -> BatchNorm1d(affine=False) -> Linear, as linprobe trains it."""

    def __init__(self, encoder: VisionTransformer, pool: str, head: nn.Sequential):
        super().__init__()
        self.encoder, self.pool, self.head = encoder, pool, head

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.features(imgs, self.pool))

    def folded_head(self) -> nn.Linear:
        """The probe as one Linear: BatchNorm in eval mode is an affine map, folded into the
        weights (W / sqrt(var + eps), b - W mean / sqrt(var + eps)), so libraries without
        the probe's BatchNorm run the same function."""
        bn, fc = self.head[0], self.head[1]
        scale = torch.rsqrt(bn.running_var.double() + bn.eps)
        w = fc.weight.double() * scale
        b = fc.bias.double() - w @ bn.running_mean.double()
        out = nn.Linear(fc.in_features, fc.out_features)
        out.weight.data.copy_(w.float())
        out.bias.data.copy_(b.float())
        return out


@dataclass
class TrainedClassifier:
    model: nn.Module          # (B, C, H, W) normalised images -> (B, classes) logits, eval mode
    classes: list[str]
    kind: str                 # finetune | linprobe
    pool: str                 # one of POOLS
    encoder: VisionTransformer
    transform: EvalTransform
    path: str
    accuracy: float | None    # the top-1 the run recorded for this checkpoint

    @property
    def preprocess(self) -> dict:
        d = self.transform.describe()
        d["in_chans"] = self.encoder.config["in_chans"]
        return d


def read_raw(path) -> dict | None:
    """The checkpoint's dict when `path` is a fine-tune or probe checkpoint, else None (a
    pretraining checkpoint, a .safetensors file, a folder: export's other formats)."""
    p = Path(path).expanduser()
    if not p.is_file() or p.suffix not in (".pth", ".pt", ".bin", ".ckpt"):
        return None
    try:  # mmap: peeking at a large pretraining checkpoint reads only its header
        raw = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - not ours to judge: the pretraining reader reports it
        return None
    probe = {"head", "pool", "encoder_config"}
    if isinstance(raw, dict) and ("classifier_config" in raw or probe <= set(raw)):
        return raw
    return None


def _classes(raw, path) -> list[str]:
    classes = raw.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise CheckpointError(f"{path} records no class names")
    return classes


def _transform(raw, img_size: int, in_chans: int, path) -> EvalTransform:
    t = EvalTransform(img_size, in_chans)
    stored = raw.get("eval_transform")  # absent in checkpoints written before it was recorded
    if stored is not None and json.dumps(stored, sort_keys=True) != json.dumps(t.describe(), sort_keys=True):
        raise CheckpointError(f"{path} was evaluated with {stored}, which this fastmae's evaluation "
                              f"transform ({t.describe()}) does not reproduce")
    return t


def _finetuned(raw, path, attn) -> TrainedClassifier:
    cfg = dict(raw["classifier_config"])
    cfg["drop_path_rate"] = 0.0
    sd = raw.get("model")
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path} has no 'model' weights")
    try:
        model = VisionTransformer(**cfg, attn=attn)
        model.load_state_dict(sd)
    except (TypeError, RuntimeError) as e:
        raise CheckpointError(f"{path} does not fit its own classifier_config: "
                              f"{str(e).splitlines()[0]}") from None
    model.eval()
    classes = _classes(raw, path)
    if len(classes) != model.num_classes:
        raise CheckpointError(f"{path} names {len(classes)} classes for a {model.num_classes}-way head")
    return TrainedClassifier(model, classes, "finetune", "avg" if model.global_pool else "token", model,
                             _transform(raw, model.img_size[0], cfg["in_chans"], path), str(path),
                             raw.get("acc1"))


def _encoder_source(raw, path: Path) -> str:
    src = str(raw.get("checkpoint") or "")
    for cand in (Path(src).expanduser(), path.parent / src):
        if src and cand.exists():
            return str(cand)
    raise CheckpointError(f"{path} holds only the linear probe; its frozen encoder comes from the "
                          f"pretrained checkpoint {src!r}, which is not found (run from the folder "
                          "linprobe ran in, or put the checkpoint there)")


def _probe(raw, path: Path, attn) -> TrainedClassifier:
    from .linprobe import probe_head
    enc_cfg = raw["encoder_config"]
    img = enc_cfg.get("img_size", 224)
    img = img[0] if isinstance(img, (list, tuple)) else img
    encoder = frozen_encoder(_encoder_source(raw, path), img, attn)
    classes = _classes(raw, path)
    head = probe_head(encoder.embed_dim, len(classes))
    try:
        head.load_state_dict(raw["head"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: the probe does not fit its encoder: "
                              f"{str(e).splitlines()[0]}") from None
    pool = raw["pool"]
    if pool not in ("cls", "avg"):
        raise CheckpointError(f"{path}: unknown probe pooling {pool!r}")
    model = ProbeClassifier(encoder, pool, head).eval()
    return TrainedClassifier(model, classes, "linprobe", f"probe-{pool}", encoder,
                             _transform(raw, encoder.img_size[0], encoder.config["in_chans"], path),
                             str(path), raw.get("acc1"))


def load_trained(path, attn: str = "auto") -> TrainedClassifier:
    """The classifier of a finetune or linprobe checkpoint; CheckpointError for anything else."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist")
    raw = read_raw(p)
    if raw is None:
        raise CheckpointError(f"{p} is not a fine-tuned classifier (a checkpoint-*.pth of `fastmae "
                              "finetune` or a probe-best.pth of `fastmae linprobe`)")
    return _finetuned(raw, p, attn) if "classifier_config" in raw else _probe(raw, p, attn)
