"""Top-k classes of new images with a trained classifier: a finetune / linprobe checkpoint
run by fastmae, or its ONNX export run by onnxruntime (to check the deployed file itself).
Preprocessing is the evaluation transform the model was measured with (resize the shorter
side to img_size / 0.875, bicubic, centre crop, normalise). Unusable files are skipped and
reported, never silently dropped: header checks up front (cached), decode failures as met.
When the images carry labels (an ImageFolder or a labelled list) the summary gives top-1 /
top-k accuracy against them - on finetune's evaluation split, the accuracy it recorded."""
import csv
import io
import json
import time
import warnings
from pathlib import Path

import torch

from .. import data
from ..data.base import DataWarning, describe_skips
from ..data.images import BadImage
from ..data.transforms import EvalTransform
from ..files import atomic_write_text, check_new
from ..progress import Progress
from ..settings import (BackendUnavailable, CheckpointError, ConfigError, DataError, autocast,
                        resolve_device, resolve_precision)
from .metrics import topk_correct

REPORT_EVERY_S = 5.0  # plain progress lines (not a terminal): one every few seconds


class _Images(torch.utils.data.Dataset):
    """Item i -> (normalised image, i, None) or (None, i, reason) for a file that cannot be decoded."""

    def __init__(self, paths, transform: EvalTransform, in_chans: int):
        self.paths, self.transform, self.in_chans = paths, transform, in_chans

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            # the loaders' own path (a JPEG decoded at the scale the resize needs): finetune's numbers
            return self.transform.from_file(self.paths[i], self.in_chans), i, None
        except BadImage as e:
            return None, i, str(e)


def _collate(items):
    good = [(x, i) for x, i, _ in items if x is not None]
    bad = [i for x, i, _ in items if x is None]
    reasons = [r for x, _, r in items if x is None]
    imgs = torch.stack([x for x, _ in good]) if good else None
    return imgs, [i for _, i in good], list(zip(bad, reasons))


class _TorchRunner:
    def __init__(self, tc, device, precision):
        self.model = tc.model.to(device).eval()
        self.device, self.precision = device, precision
        self.name = f"fastmae ({device.type}, {precision})"

    @torch.inference_mode()
    def __call__(self, imgs: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.precision):
            logits = self.model(imgs.to(self.device, non_blocking=True))
        return logits.float().cpu()


class _OnnxRunner:
    """An exported .onnx file: its preprocessing and classes come from its metadata."""

    def __init__(self, path, device):
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailable("--onnx needs onnxruntime (pip install 'fastmae[onnx]')") from None
        from .export_classifier import META_KEY
        path = Path(path).expanduser()
        if not path.is_file():
            raise CheckpointError(f"ONNX file {path} does not exist")
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
            meta = json.loads(self.session.get_modelmeta().custom_metadata_map[META_KEY])
        except (KeyError, ValueError):
            raise CheckpointError(f"{path} was not exported by `fastmae export --format onnx` (no "
                                  f"{META_KEY} metadata)") from None
        except Exception as e:  # onnxruntime raises its own types for unreadable graphs
            raise CheckpointError(f"cannot load {path} with onnxruntime: {str(e).splitlines()[0]}") from None
        self.classes, self.preprocess = meta["classes"], meta["preprocess"]
        self.input = self.session.get_inputs()[0].name
        self.name = f"onnxruntime ({self.session.get_providers()[0]})"

    def __call__(self, imgs: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input: imgs.numpy()})[0]).float()


def _csv(rows, k: int, labelled: bool) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["path"] + (["label"] if labelled else [])
    for j in range(1, k + 1):
        head += [f"top{j}", f"prob{j}"]
    w.writerow(head)
    w.writerows(rows)
    return buf.getvalue()


def predict(source, out, *, checkpoint=None, onnx=None, topk: int = 5, batch_size: int = 64,
            num_workers: int = 0, device="auto", precision=None, attn: str = "auto",
            force: bool = False, progress: bool = True) -> dict:
    """Write `out` (CSV: path, [label], top1, prob1, ...) for every usable image under
    `source` (a folder, recursive, or a file list). Returns a summary dict."""
    out = Path(out).expanduser()
    if out.suffix != ".csv":
        raise ConfigError(f"--out must be a .csv file, got {out.name}")
    if topk < 1 or batch_size < 1 or num_workers < 0:
        raise ConfigError("--topk and --batch-size must be at least 1, --num-workers at least 0")
    if (checkpoint is None) == (onnx is None):
        raise ConfigError("give --checkpoint (a finetune / linprobe checkpoint) or --onnx (its ONNX export)")
    check_new(out, force, "output")
    device = resolve_device(device)
    if onnx is not None:
        runner = _OnnxRunner(onnx, device)
        classes, p = runner.classes, runner.preprocess
        precision = "fp32"
    else:
        from .trained import load_trained
        precision = resolve_precision(precision, device)
        tc = load_trained(checkpoint, attn)
        runner = _TorchRunner(tc, device, precision)
        classes, p = tc.classes, tc.preprocess
    transform = EvalTransform(p["img_size"], p["in_chans"])
    if transform.describe() != {k: v for k, v in p.items() if k != "in_chans"}:
        raise CheckpointError(f"the model's preprocessing {p} is not fastmae's evaluation transform")
    k = min(topk, len(classes))

    samples = data.scan(source)
    total = len(samples)
    samples, skipped = data.usable(samples)
    labelled = samples.labels is not None
    if labelled:  # the folder's class names, looked up among the model's
        index = {c: i for i, c in enumerate(classes)}
        unknown = sorted({samples.classes[y] for y in samples.labels} - set(index))
        truth = None if unknown else torch.tensor([index[samples.classes[y]] for y in samples.labels])
    loader = torch.utils.data.DataLoader(
        _Images(samples.paths, transform, p["in_chans"]), batch_size=batch_size, shuffle=False,
        num_workers=num_workers, collate_fn=_collate, pin_memory=device.type == "cuda")
    rows, correct, scored = [], {1: 0, k: 0}, 0
    bar = Progress(len(samples), "predict", unit="image", enabled=progress)
    t0 = last = time.perf_counter()
    for imgs, idx, bad in loader:
        skipped += [(samples.paths[i], r) for i, r in bad]
        if imgs is not None:
            logits = runner(imgs)
            top = logits.topk(k, dim=1).indices  # ranked by logits, as finetune's evaluation ranks
            probs = logits.softmax(dim=1).gather(1, top)
            for row, i in enumerate(idx):
                cells = [samples.paths[i]] + ([samples.classes[samples.labels[i]]] if labelled else [])
                for j in range(k):
                    cells += [classes[top[row, j]], f"{float(probs[row, j]):.6f}"]
                rows.append(cells)
            if labelled and truth is not None:
                for kk, v in topk_correct(logits, truth[idx], (1, k)).items():
                    correct[kk] += v
                scored += len(idx)
        bar.update(len(idx) + len(bad))
        now = time.perf_counter()
        if bar.bar is not None or now - last >= REPORT_EVERY_S:
            bar.report(img_s=f"{bar.n / max(now - t0, 1e-9):.1f}")
            last = now
    seconds = time.perf_counter() - t0
    if bar.bar is None:  # the plain-line mode always ends with the final count
        bar.report(img_s=f"{bar.n / max(seconds, 1e-9):.1f}")
    bar.close()
    if skipped:
        warnings.warn(describe_skips(skipped, total), DataWarning, stacklevel=2)
    if not rows:
        raise DataError(f"none of the {total} image files under {source} could be read, e.g. "
                        f"{skipped[0][0]} ({skipped[0][1]})")
    atomic_write_text(_csv(rows, k, labelled), out)
    summary = {"out": str(out), "images": len(rows), "skipped": len(skipped), "seconds": round(seconds, 3),
               "images_per_s": round(len(rows) / max(seconds, 1e-9), 2), "runner": runner.name,
               "topk": k}
    if labelled and truth is None:
        summary["accuracy"] = f"not computed: the model has no class {unknown[0]!r}"
    elif labelled:
        summary["acc1"] = 100.0 * correct[1] / scored
        summary[f"acc{k}"] = 100.0 * correct[k] / scored
    summary["skipped_files"] = [list(s) for s in skipped]
    return summary
