"""`fastmae predict`: top-k CSV from a finetune / linprobe checkpoint or its ONNX export,
finetune's own accuracy on its evaluation split, bad files skipped and reported."""
import csv
import json

import numpy as np
import pytest
import torch

from fastmae import data
from fastmae.cli import main
from fastmae.data.transforms import EvalTransform
from fastmae.downstream.common import evaluate
from fastmae.downstream.trained import load_trained

from .deploy_helpers import FAST, randomised
from .downstream_helpers import image_folder, save_checkpoint, split_folder, tiny_mae


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real `fastmae finetune` run (checkpoint, its data) and a random-weight copy of it."""
    root = tmp_path_factory.mktemp("predict")
    mae = save_checkpoint(tiny_mae(), root / "mae.pth")
    split = split_folder(root / "data", train=4, val=4)
    assert main(["finetune", "--checkpoint", str(mae), "--data", str(split), "--epochs", "2",
                 "--batch-size", "6", "--blr", "0.05", "--warmup-epochs", "0", "--output-dir",
                 str(root / "ft"), *FAST]) == 0
    ckpt = root / "ft" / "checkpoint-best.pth"
    return {"root": root, "mae": mae, "data": split, "ckpt": ckpt,
            "random": randomised(ckpt, root / "random.pth", seed=3)}


def _predict(argv, capsys) -> dict:
    capsys.readouterr()
    assert main(["predict", *map(str, argv)]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _error(capsys, argv, match):
    capsys.readouterr()
    assert main(["predict", *map(str, argv)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predict_reproduces_finetune_accuracy(run, tmp_path, capsys):
    recorded = json.loads((run["ckpt"].parent / "metrics.json").read_text())
    s = _predict(["--checkpoint", run["ckpt"], "--data", run["data"] / "val", "--out", tmp_path / "p.csv",
                  "--topk", "2", "--device", "cpu"], capsys)
    assert s["images"] == 12 and s["skipped"] == 0 and s["topk"] == 2
    assert s["acc1"] == recorded["best_acc1"]
    # image by image: the classes finetune's own evaluation pass ranks first
    tc = load_trained(run["ckpt"])
    loader = data.classification_loader(run["data"] / "val", train=False, img_size=16, batch_size=5,
                                        backend="torch", device="cpu", num_workers=0)
    metrics, cm = evaluate(tc.model, loader, 3, "fp32", torch.device("cpu"))
    assert metrics["acc1"] == s["acc1"] and metrics["acc5"] == pytest.approx(100.0)
    rows = _rows(tmp_path / "p.csv")
    assert list(rows[0]) == ["path", "label", "top1", "prob1", "top2", "prob2"]
    predicted = torch.zeros(3, 3, dtype=torch.int64)
    for r in rows:
        predicted[tc.classes.index(r["label"]), tc.classes.index(r["top1"])] += 1
    assert torch.equal(predicted, cm)


def test_predict_probabilities_file_list_and_bad_files(run, tmp_path, capsys):
    folder = image_folder(tmp_path / "imgs", per_class=2, size=24)
    (folder / "red" / "empty.png").write_bytes(b"")
    (folder / "blue" / "text.jpg").write_text("not an image")
    good = sorted(str(p) for p in folder.rglob("*.png") if p.stat().st_size)
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(good + [str(folder / "blue" / "text.jpg")]) + "\n")
    s = _predict(["--checkpoint", run["random"], "--data", listing, "--out", tmp_path / "p.csv",
                  "--batch-size", "4"], capsys)
    assert s["images"] == 6 and s["skipped"] == 1 and "acc1" not in s and s["images_per_s"] > 0
    rows = _rows(tmp_path / "p.csv")
    assert [r["path"] for r in rows] == good and "label" not in rows[0]
    tc = load_trained(run["random"])
    from PIL import Image
    x = torch.stack([EvalTransform(16)(Image.open(p).convert("RGB")) for p in good])
    with torch.no_grad():
        probs = tc.model(x).softmax(1)
    for r, p in zip(rows, probs):
        order = p.argsort(descending=True)
        assert [r[f"top{j}"] for j in (1, 2, 3)] == [tc.classes[i] for i in order]
        got = [float(r[f"prob{j}"]) for j in (1, 2, 3)]
        np.testing.assert_allclose(got, p[order].numpy(), atol=2e-6)
    assert max(float(r["prob1"]) for r in rows) > 0.5  # random weights: confident, not uniform
    # the folder itself: labelled by sub-folder, both unusable files reported on stderr
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(run["random"]), "--data", str(folder),
                 "--out", str(tmp_path / "q.csv")]) == 0
    captured = capsys.readouterr()
    s = json.loads(captured.out.strip().splitlines()[-1])
    assert s["skipped"] == 2 and "acc1" in s
    assert "skipped 2 of 8 image files" in captured.err and "empty.png" in captured.err
    assert "predict: image 6/6" in captured.err  # not a terminal: plain progress lines, no bar


def test_predict_with_onnx_matches_checkpoint(run, tmp_path, capsys):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    assert main(["export", str(run["random"]), "--format", "onnx", "--out", str(tmp_path / "m.onnx"),
                 "--onnx-exporter", "torchscript"]) == 0
    a = _predict(["--checkpoint", run["random"], "--data", run["data"] / "val", "--out", tmp_path / "a.csv"],
                 capsys)
    b = _predict(["--onnx", tmp_path / "m.onnx", "--data", run["data"] / "val", "--out", tmp_path / "b.csv"],
                 capsys)
    assert b["runner"].startswith("onnxruntime") and a["acc1"] == b["acc1"]
    for ra, rb in zip(_rows(tmp_path / "a.csv"), _rows(tmp_path / "b.csv"), strict=True):
        assert ra["path"] == rb["path"] and ra["top1"] == rb["top1"]
        assert float(ra["prob1"]) == pytest.approx(float(rb["prob1"]), abs=1e-4)


def test_predict_linprobe_checkpoint(run, tmp_path, capsys):
    assert main(["linprobe", "--checkpoint", str(run["mae"]), "--data", str(run["data"]), "--epochs", "2",
                 "--batch-size", "6", "--output-dir", str(tmp_path / "lp"), *FAST]) == 0
    recorded = json.loads((tmp_path / "lp" / "metrics.json").read_text())
    s = _predict(["--checkpoint", tmp_path / "lp" / "probe-best.pth", "--data", run["data"] / "val",
                  "--out", tmp_path / "p.csv"], capsys)
    assert s["acc1"] == recorded["best_acc1"]


def test_predict_errors_are_one_line(run, tmp_path, capsys):
    val, out = run["data"] / "val", tmp_path / "p.csv"
    _error(capsys, ["--checkpoint", run["ckpt"], "--data", tmp_path / "none", "--out", out], "does not exist")
    _error(capsys, ["--checkpoint", run["ckpt"], "--data", val, "--out", tmp_path / "p.txt"], ".csv")
    _error(capsys, ["--data", val, "--out", out], "give --checkpoint")
    _error(capsys, ["--checkpoint", run["mae"], "--data", val, "--out", out], "not a fine-tuned classifier")
    _error(capsys, ["--checkpoint", run["ckpt"], "--data", val, "--out", out, "--topk", "0"], "--topk")
    (tmp_path / "fake.onnx").write_bytes(b"\x08\x01")
    _error(capsys, ["--onnx", tmp_path / "fake.onnx", "--data", val, "--out", out], "fake.onnx")
    out.write_text("keep me")
    _error(capsys, ["--checkpoint", run["ckpt"], "--data", val, "--out", out], "already exists")
    assert out.read_text() == "keep me"


@pytest.mark.slow
def test_predict_builtin_val_split_reproduces_finetune(tmp_path, capsys):
    """The built-in dataset, as a new user runs it: finetune on a few labels, then predict
    on the built-in val split gives the accuracy finetune recorded."""
    mae = save_checkpoint(tiny_mae(), tmp_path / "mae.pth")
    assert main(["finetune", "--checkpoint", str(mae), "--labels-per-class", "4", "--epochs", "1",
                 "--batch-size", "40", "--blr", "0.05", "--warmup-epochs", "0",
                 "--output-dir", str(tmp_path / "ft"), *FAST]) == 0
    recorded = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    s = _predict(["--checkpoint", tmp_path / "ft" / "checkpoint-best.pth", "--data",
                  data.builtin_dataset("val"), "--out", tmp_path / "p.csv", "--batch-size", "40"], capsys)
    assert s["images"] == recorded["val_images"] == 500
    assert (s["acc1"], s["acc5"]) == (recorded["best_acc1"], recorded["best_acc5"])
    assert len({r["top1"] for r in _rows(tmp_path / "p.csv")}) > 3  # a real ranking, not one class


@pytest.mark.gpu
def test_predict_on_gpu_matches_cpu(run, tmp_path, capsys):
    """The CUDA path (fastmae's Triton kernels, flash / SDPA attention): fp32 gives the CPU's
    probabilities; bf16 the same top class where the CPU run is confident."""
    common = ["--checkpoint", run["random"], "--data", run["data"] / "val"]
    cpu = _predict([*common, "--out", tmp_path / "c.csv", "--device", "cpu"], capsys)
    fp32 = _predict([*common, "--out", tmp_path / "g.csv", "--device", "cuda", "--precision", "fp32"], capsys)
    bf16 = _predict([*common, "--out", tmp_path / "b.csv", "--device", "cuda"], capsys)
    assert "cuda" in fp32["runner"] and "bf16" in bf16["runner"] and cpu["images"] == bf16["images"] == 12
    for c, g, b in zip(_rows(tmp_path / "c.csv"), _rows(tmp_path / "g.csv"), _rows(tmp_path / "b.csv")):
        assert c["top1"] == g["top1"] and float(c["prob1"]) == pytest.approx(float(g["prob1"]), abs=1e-3)
        if float(c["prob1"]) > 0.6:
            assert b["top1"] == c["top1"]
