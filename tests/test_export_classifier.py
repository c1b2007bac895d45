"""`fastmae export` of fine-tuned classifiers: each format is read back by its own library
(timm, transformers, onnxruntime, torch.export) and gives fastmae's logits."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from fastmae.cli import main
from fastmae.data.transforms import EvalTransform
from fastmae.downstream.trained import load_trained

from .deploy_helpers import RUNS, randomised, train_runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """pool -> (checkpoint from the CLI run, the same checkpoint with random weights)."""
    root = tmp_path_factory.mktemp("deploy")
    real = train_runs(root)
    return {name: (path, randomised(path, root / f"{name}-random.pth", seed=i))
            for i, (name, path) in enumerate(real.items())}


def _export(argv, capsys) -> dict:
    capsys.readouterr()
    assert main(["export", *map(str, argv)]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _error(capsys, argv, match):
    capsys.readouterr()
    assert main(["export", *map(str, argv)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err


def _logits(tc, x):
    with torch.no_grad():
        return tc.model(x)


@pytest.mark.parametrize("pool", list(RUNS))
def test_timm_loads_strictly_with_fastmae_logits(runs, pool, tmp_path, capsys):
    import timm
    real, ckpt = runs[pool]
    tc = load_trained(ckpt)
    s = _export([ckpt, "--format", "timm", "--out", tmp_path / "timm"], capsys)
    assert s["kind"] == ("linprobe" if pool.startswith("probe") else "finetune") and s["pool"] == pool
    cfg = json.loads((tmp_path / "timm" / "config.json").read_text())
    model = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True).eval()
    # the form with the architecture named: strict too, since num_classes agrees with the file
    named = timm.create_model(cfg["architecture"], pretrained=True, num_classes=cfg["num_classes"],
                              global_pool=cfg["global_pool"], **{k: v for k, v in cfg["model_args"].items()
                                                                 if k != "global_pool"},
                              pretrained_cfg_overlay=dict(file=str(tmp_path / "timm" / "model.safetensors"),
                                                          **cfg["pretrained_cfg"])).eval()
    x = torch.randn(3, 3, 16, 16)
    ours = _logits(tc, x)
    assert ours.abs().max() > 0.5  # random weights: logits of order one
    with torch.no_grad():
        torch.testing.assert_close(model(x), ours, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(named(x), ours, rtol=1e-5, atol=1e-5)
    assert model.pretrained_cfg["label_names"] == tc.classes == ["blue", "green", "red"]
    # timm's own evaluation transform is fastmae's
    data_cfg = timm.data.resolve_data_config({}, model=model)
    img = Image.fromarray(np.random.randint(0, 256, (23, 31, 3), dtype=np.uint8))
    torch.testing.assert_close(timm.data.create_transform(**data_cfg)(img), EvalTransform(16)(img))
    if pool == "avg":  # a real `fastmae finetune` checkpoint exports the same way
        real_s = _export([real, "--format", "timm", "--out", tmp_path / "real.safetensors"], capsys)
        assert real_s["files"] == [str(tmp_path / "real.safetensors"), str(tmp_path / "real.json")]
        assert real_s["max_abs_diff"] <= 1e-5


@pytest.mark.parametrize("pool", ["avg", "token", "probe-cls"])
def test_hf_classifier_and_pipeline(runs, pool, tmp_path, capsys):
    from transformers import AutoModelForImageClassification, pipeline
    _, ckpt = runs[pool]
    tc = load_trained(ckpt)
    s = _export([ckpt, "--format", "hf", "--out", tmp_path / "hf"], capsys)
    want = "BeitForImageClassification" if pool == "avg" else "ViTForImageClassification"
    assert s["architecture"] == want
    hf = AutoModelForImageClassification.from_pretrained(str(tmp_path / "hf")).eval()
    assert hf.config.id2label == {0: "blue", 1: "green", 2: "red"}
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=x).logits, _logits(tc, x), rtol=1e-5, atol=1e-5)
    # the pipeline preprocesses as fastmae evaluates (resize shorter side, centre crop, normalise);
    # an even crop margin, since Hugging Face rounds an odd one's half down and torchvision up
    img = Image.fromarray(np.random.randint(0, 256, (40, 30, 3), dtype=np.uint8))
    img.save(tmp_path / "img.png")
    got = pipeline("image-classification", model=str(tmp_path / "hf"))(str(tmp_path / "img.png"), top_k=3)
    probs = _logits(tc, EvalTransform(16)(img)[None]).softmax(1)[0]
    want = {c: float(p) for c, p in zip(tc.classes, probs)}
    assert got[0]["label"] == max(want, key=want.get)
    for r in got:
        assert r["score"] == pytest.approx(want[r["label"]], abs=2e-3)


@pytest.mark.parametrize("pool", ["avg", "probe-avg", *(pytest.param(p, marks=pytest.mark.slow)
                                                     for p in ("token", "probe-cls"))])
def test_onnx_runtime_dynamic_batch_and_metadata(runs, pool, tmp_path, capsys):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    _, ckpt = runs[pool]
    tc = load_trained(ckpt)
    out = tmp_path / "m.onnx"
    s = _export([ckpt, "--format", "onnx", "--out", out, "--onnx-exporter", "torchscript"], capsys)
    assert s["exporter"] == "torchscript"
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        x = torch.randn(batch, 3, 16, 16)
        got = torch.from_numpy(sess.run(None, {"pixel_values": x.numpy()})[0])
        torch.testing.assert_close(got, _logits(tc, x), rtol=1e-4, atol=1e-4)
    meta = json.loads(sess.get_modelmeta().custom_metadata_map["fastmae_classifier"])
    assert meta["classes"] == tc.classes and meta["preprocess"] == tc.preprocess
    assert meta["preprocess"]["mean"] == [0.485, 0.456, 0.406] and meta["preprocess"]["resize"] == 18


@pytest.mark.slow
def test_onnx_dynamo_exporter(runs, tmp_path, capsys):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    _, ckpt = runs["avg"]
    tc = load_trained(ckpt)
    s = _export([ckpt, "--format", "onnx", "--out", tmp_path / "m.onnx"], capsys)
    assert s["exporter"] == "dynamo"
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(7, 3, 16, 16)
    got = torch.from_numpy(sess.run(None, {"pixel_values": x.numpy()})[0])
    torch.testing.assert_close(got, _logits(tc, x), rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # torch.export: ~5-10 s even for the tiny model
@pytest.mark.parametrize("pool", ["avg", "probe-cls"])
def test_pt2_export(runs, pool, tmp_path, capsys):
    _, ckpt = runs[pool]
    tc = load_trained(ckpt)
    _export([ckpt, "--format", "pt2", "--out", tmp_path / "m.pt2"], capsys)
    program = torch.export.load(str(tmp_path / "m.pt2"))
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), _logits(tc, x), rtol=1e-5, atol=1e-5)


def test_export_errors_are_one_line(runs, tmp_path, capsys):
    real, ckpt = runs["avg"]
    mae = real.parent.parent / "mae.pth"
    _error(capsys, [mae, "--format", "onnx", "--out", tmp_path / "m.onnx"], "is not a fine-tuned classifier")
    _error(capsys, [ckpt, "--format", "official", "--out", tmp_path / "m.pth"], "is a fine-tuned classifier")
    _error(capsys, [runs["probe-avg"][1], "--format", "hf", "--out", tmp_path / "h"],
           "no Hugging Face classifier counterpart")
    _error(capsys, [ckpt, "--format", "hf", "--out", tmp_path / "h.safetensors"], "save_pretrained folder")
    _error(capsys, [ckpt, "--format", "pt2", "--out", tmp_path / "m.bin"], "writes a .pt2 file")
    (tmp_path / "taken").mkdir()
    _error(capsys, [ckpt, "--format", "timm", "--out", tmp_path / "taken"], "already exists")
    moved = tmp_path / "probe.pth"
    raw = torch.load(runs["probe-cls"][1], weights_only=True)
    raw["checkpoint"] = str(tmp_path / "gone.pth")
    torch.save(raw, moved)
    _error(capsys, [moved, "--format", "timm", "--out", tmp_path / "t"], "is not found")
    # a pretraining checkpoint keeps its encoder export
    s = _export([mae, "--format", "timm", "--out", tmp_path / "enc.safetensors"], capsys)
    assert s["format"] == "timm" and "kind" not in s
