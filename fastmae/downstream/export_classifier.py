"""A trained classifier (finetune or linprobe checkpoint) out of fastmae, with its class
names and evaluation transform:
timm  model.safetensors + config.json in timm's own layout: timm.create_model("local-dir:DIR",
      pretrained=True) builds it and loads every tensor strictly;
hf    ViTForImageClassification (cls token) or BeitForImageClassification (patch mean +
      fc_norm) save_pretrained folder with id2label and an image-processor config;
onnx  one graph with a dynamic batch, preprocessing and class names in its metadata;
pt2   a torch.export ExportedProgram with a dynamic batch (torch.export.load).
Each export is read back by its own library and compared with fastmae's logits on a random
batch of another size than the one exported with (the summary's max_abs_diff)."""
import json
import warnings
from pathlib import Path

import torch

from ..files import atomic_save_dir, atomic_save_file, atomic_write_json, check_new
from ..settings import BackendUnavailable, CheckpointError, ConfigError

FORMATS = ("timm", "hf", "onnx", "pt2")
ONNX_EXPORTERS = ("auto", "dynamo", "torchscript")  # auto: dynamo, else the tracer, saying why
TIMM_NAMES = {(192, 12, 3): "vit_tiny", (384, 12, 6): "vit_small", (768, 12, 12): "vit_base",
              (1024, 24, 16): "vit_large", (1280, 32, 16): "vit_huge"}
TIMM_EPS = 1e-6  # timm's ViT LayerNorm eps; model_args cannot carry another
META_KEY = "fastmae_classifier"
VERIFY_TOL = 1e-3  # a bigger gap is a conversion bug, not rounding


def describe(tc) -> dict:
    """Everything a consumer needs besides the weights: classes, transform, architecture."""
    return {"classes": tc.classes, "kind": tc.kind, "pool": tc.pool, "preprocess": tc.preprocess,
            "encoder_config": {k: v for k, v in tc.encoder.config.items()
                               if k not in ("num_classes", "global_pool", "drop_path_rate")},
            "source": tc.path, "recorded_acc1": tc.accuracy}


def _example(tc, batch: int) -> torch.Tensor:
    p = tc.preprocess
    return torch.randn(batch, p["in_chans"], p["img_size"], p["img_size"])


def _check(name: str, ours: torch.Tensor, theirs) -> float:
    diff = float((ours.float() - torch.as_tensor(theirs).float()).abs().max())
    if not diff <= VERIFY_TOL * max(1.0, float(ours.abs().max())):
        raise RuntimeError(f"{name} export differs from fastmae's logits by {diff:g}")
    return diff


def deploy_module(tc) -> torch.nn.Module:
    """The graph to export: a probe's BatchNorm folded into its Linear (exporters and
    runtimes then see one matmul, and ONNX's BatchNorm needs a known channel count)."""
    if tc.kind != "linprobe":
        return tc.model
    from .trained import ProbeClassifier
    return ProbeClassifier(tc.encoder, tc.model.pool, tc.model.folded_head()).eval()


# -- timm --------------------------------------------------------------------------------

def timm_arch(cfg: dict) -> str:
    """A registered timm ViT entry point of the same family; model_args set every size."""
    size = TIMM_NAMES.get((cfg["embed_dim"], cfg["depth"], cfg["num_heads"]), "vit_base")
    name = f"{size}_patch{cfg['patch_size']}_{cfg['img_size'][0]}"
    try:
        import timm
        return name if timm.is_model(name) else "vit_base_patch16_224"
    except ImportError:
        return name


def timm_export(tc) -> tuple[dict, dict]:
    """(state dict, config.json) of timm's VisionTransformer for a trained classifier."""
    cfg = tc.encoder.config
    if abs(float(cfg["norm_eps"]) - TIMM_EPS) > 1e-12:
        raise CheckpointError(f"timm's VisionTransformer uses LayerNorm eps {TIMM_EPS:g}; this model's "
                              f"is {cfg['norm_eps']:g} (use --format onnx or pt2)")
    pool = {"avg": "avg", "token": "token", "probe-cls": "token", "probe-avg": "avg"}[tc.pool]
    args = dict(img_size=list(cfg["img_size"]), patch_size=cfg["patch_size"], in_chans=cfg["in_chans"],
                embed_dim=cfg["embed_dim"], depth=cfg["depth"], num_heads=cfg["num_heads"],
                mlp_ratio=cfg["mlp_ratio"], qkv_bias=True, class_token=True, global_pool=pool)
    if tc.pool == "probe-avg":
        args["fc_norm"] = False  # timm then norms every token before the mean, as the probe saw them
    sd = {k: v for k, v in tc.encoder.state_dict().items() if not k.startswith("head.")}
    head = tc.model.folded_head() if tc.kind == "linprobe" else tc.model.head
    sd["head.weight"], sd["head.bias"] = head.weight.detach(), head.bias.detach()
    p = tc.preprocess
    n = len(tc.classes)
    config = {"architecture": timm_arch(cfg), "num_classes": n, "num_features": cfg["embed_dim"],
              "global_pool": pool, "model_args": args,
              "pretrained_cfg": {"input_size": [cfg["in_chans"], *cfg["img_size"]],
                                 "fixed_input_size": True, "interpolation": p["interpolation"],
                                 "crop_pct": p["crop_pct"], "crop_mode": "center", "mean": p["mean"],
                                 "std": p["std"], "num_classes": n, "first_conv": "patch_embed.proj",
                                 "classifier": "head"},
              "label_names": tc.classes, META_KEY: describe(tc)}
    return sd, config


def timm_paths(out: Path) -> tuple[Path, Path]:
    """DIR -> DIR/model.safetensors + DIR/config.json (timm's layout); X.safetensors -> X.json beside it."""
    if out.suffix == ".safetensors":
        return out, out.with_suffix(".json")
    return out / "model.safetensors", out / "config.json"


def timm_model(config: dict, weights: Path):
    """The exported model rebuilt by timm, every tensor loaded strictly."""
    import timm
    return timm.create_model(config["architecture"], pretrained=True, **config["model_args"],
                             num_classes=config["num_classes"],
                             pretrained_cfg_overlay=dict(file=str(weights), **config["pretrained_cfg"]))


def _write_timm(tc, out: Path, force: bool) -> dict:
    from safetensors.torch import save_file
    sd, config = timm_export(tc)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in sd.items()}
    meta = {"format": "pt", META_KEY: json.dumps(config)}
    weights, cfg_file = timm_paths(out)

    def write(folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(folder / "model.safetensors"), metadata=meta)
        atomic_write_json(config, folder / "config.json")

    if out.suffix == ".safetensors":
        check_new(cfg_file, force, "config")
        atomic_save_file(lambda tmp: save_file(tensors, str(tmp), metadata=meta), weights)
        atomic_write_json(config, cfg_file)
    else:
        atomic_save_dir(write, out)
    summary = {"files": [str(weights), str(cfg_file)], "architecture": config["architecture"]}
    try:
        import timm  # noqa: F401
    except ImportError:
        return summary
    x = _example(tc, 3)
    with torch.no_grad():
        summary["max_abs_diff"] = _check("timm", tc.model(x), timm_model(config, weights).eval()(x))
    return summary


# -- Hugging Face ------------------------------------------------------------------------

def _write_hf(tc, out: Path) -> dict:
    from .classifier_hf import hf_classifier, hf_logits
    if out.suffix:
        raise ConfigError(f"--format hf writes a save_pretrained folder; give a folder name, not {out.name}")
    model, processor = hf_classifier(tc)

    def write(folder: Path):
        model.save_pretrained(str(folder))
        processor.save_pretrained(str(folder))
        atomic_write_json(describe(tc), folder / "fastmae.json")

    atomic_save_dir(write, out)
    from transformers import AutoModelForImageClassification
    x = _example(tc, 3)
    back = AutoModelForImageClassification.from_pretrained(str(out)).eval()
    with torch.no_grad():
        diff = _check("Hugging Face", tc.model(x), hf_logits(back, x))
    return {"files": sorted(str(p) for p in out.iterdir()), "architecture": type(model).__name__,
            "max_abs_diff": diff}


# -- ONNX and torch.export ---------------------------------------------------------------

def _onnx_export(tc, path: Path, exporter: str) -> None:
    x = _example(tc, 2)  # batch 1 would be specialised into the graph
    kw = dict(input_names=["pixel_values"], output_names=["logits"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            prog = torch.onnx.export(deploy_module(tc), (x,), dynamo=True, verbose=False,
                                     dynamic_shapes={"imgs": {0: torch.export.Dim("batch")}}, **kw)
            prog.save(str(path))
        else:
            torch.onnx.export(deploy_module(tc), (x,), str(path), dynamo=False,
                              dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}}, **kw)


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"[:300]


def _write_onnx(tc, out: Path, exporter: str) -> dict:
    if exporter not in ONNX_EXPORTERS:
        raise ConfigError(f"unknown ONNX exporter {exporter!r}; choose {' or '.join(ONNX_EXPORTERS)}")
    try:
        import onnx
    except ImportError:
        raise BackendUnavailable("--format onnx needs the onnx package "
                                 "(pip install 'fastmae[onnx]')") from None
    if out.suffix != ".onnx":
        raise ConfigError(f"--format onnx writes a .onnx file, not {out.name}")
    info = describe(tc)
    used, why = exporter, None

    def write(tmp: Path):
        nonlocal used, why
        if exporter == "torchscript":
            _onnx_export(tc, tmp, "torchscript")
        else:
            try:
                _onnx_export(tc, tmp, "dynamo")
                used = "dynamo"
            except Exception as e:  # noqa: BLE001 - no onnxscript, or an op torch.export cannot take
                if exporter == "dynamo":
                    raise BackendUnavailable(f"the dynamo ONNX exporter failed ({_first_line(e)}); "
                                             "try --onnx-exporter torchscript") from None
                used, why = "torchscript", _first_line(e)
                _onnx_export(tc, tmp, "torchscript")
        model = onnx.load(str(tmp))
        meta = {META_KEY: json.dumps(info), "exporter": used}
        for key, value in meta.items():
            model.metadata_props.add(key=key, value=value)
        onnx.save(model, str(tmp))

    atomic_save_file(write, out)
    summary = {"files": [str(out)], "exporter": used}
    if why:
        summary["dynamo_failed"] = why
    try:
        import onnxruntime as ort
    except ImportError:
        summary["verified"] = "onnxruntime not installed"
        return summary
    x = _example(tc, 3)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        summary["max_abs_diff"] = _check("ONNX", tc.model(x), sess.run(None, {"pixel_values": x.numpy()})[0])
    return summary


def _write_pt2(tc, out: Path) -> dict:
    if out.suffix != ".pt2":
        raise ConfigError(f"--format pt2 writes a .pt2 file, not {out.name}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(deploy_module(tc), (_example(tc, 2),),
                                 dynamic_shapes={"imgs": {0: torch.export.Dim("batch")}})
    def write(tmp: Path):
        with open(tmp, "wb") as f:  # a file object: torch.export wants a .pt2 name otherwise
            torch.export.save(ep, f, extra_files={"fastmae.json": json.dumps(describe(tc))})

    atomic_save_file(write, out)
    x = _example(tc, 3)
    with torch.no_grad():
        diff = _check("torch.export", tc.model(x), torch.export.load(str(out)).module()(x))
    return {"files": [str(out)], "max_abs_diff": diff}


def export_classifier(tc, fmt: str, out, *, force: bool = False, exporter: str = "auto") -> dict:
    """Write a TrainedClassifier in `fmt`; returns a summary with the files written."""
    if fmt not in FORMATS:
        raise ConfigError(f"a fine-tuned classifier exports as {', '.join(FORMATS)}, not {fmt!r} "
                          "(--format official holds pretraining weights)")
    out = Path(out).expanduser()
    folder = fmt == "hf" or (fmt == "timm" and out.suffix != ".safetensors")
    check_new(out, force, "folder" if folder else "output")
    if fmt == "timm" and out.suffix not in ("", ".safetensors"):
        raise ConfigError(f"--format timm writes a folder (model.safetensors + config.json) or "
                          f"FILE.safetensors, not {out.name}")
    tc.model.cpu().float().eval()
    for m in tc.model.modules():  # exporters trace plain torch ops, not fastmae's custom kernels
        if isinstance(getattr(m, "kernels", None), str):
            m.kernels = "torch"
    if fmt == "timm":
        summary = _write_timm(tc, out, force)
    elif fmt == "hf":
        summary = _write_hf(tc, out)
    elif fmt == "onnx":
        summary = _write_onnx(tc, out, exporter)
    else:
        summary = _write_pt2(tc, out)
    return {"format": fmt, "out": str(out), "kind": tc.kind, "pool": tc.pool,
            "num_classes": len(tc.classes), **summary}
