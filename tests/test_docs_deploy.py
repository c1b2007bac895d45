"""The Deploy snippets of docs/downstream.md, run as written against a model exported from
a real `fastmae finetune` checkpoint: each must print fastmae's own top class."""
import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastmae.cli import main
from fastmae.data.transforms import EvalTransform
from fastmae.downstream.trained import load_trained

from .deploy_helpers import randomised, train_runs

DOC = Path(__file__).resolve().parents[1] / "docs" / "downstream.md"


def deploy_snippets() -> dict:
    """library -> code of the ```python blocks in the Deploy section, by the library they import."""
    text = DOC.read_text(encoding="utf-8")
    section = re.search(r"^## \d+\. Deploy.*?(?=^## |\Z)", text, re.S | re.M)
    assert section, "docs/downstream.md has no Deploy section"
    blocks = re.findall(r"```python\n(.*?)```", section.group(0), re.S)
    out = {}
    for code in blocks:
        for lib in ("timm", "transformers", "onnxruntime"):
            if re.search(rf"^(import|from) {lib}\b", code, re.M):
                out[lib] = code
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("docs-deploy")
    ckpt = randomised(train_runs(root, names=("avg",))["avg"], root / "ft.pth", seed=7)
    for fmt, out, extra in (("timm", "ft-timm", []), ("hf", "ft-hf", []),
                            ("onnx", "ft.onnx", ["--onnx-exporter", "torchscript"])):
        if fmt == "onnx" and importlib.util.find_spec("onnx") is None:
            continue  # the onnxruntime snippet's test skips
        assert main(["export", str(ckpt), "--format", fmt, "--out", str(root / out), *extra]) == 0
    # a photo whose centre-crop margins are even (Hugging Face rounds an odd one differently)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(
        root / "photo.jpg", quality=95)
    tc = load_trained(ckpt)
    with torch.no_grad():
        logits = tc.model(EvalTransform(16)(Image.open(root / "photo.jpg").convert("RGB"))[None])
    return root, tc, logits


def test_the_doc_has_three_snippets():
    assert set(deploy_snippets()) == {"timm", "transformers", "onnxruntime"}


@pytest.mark.parametrize("lib", ["timm", "transformers", "onnxruntime"])
def test_deploy_snippet_runs(exported, lib, monkeypatch, capsys):
    pytest.importorskip(lib)
    if lib == "onnxruntime":
        pytest.importorskip("onnx")
    root, tc, logits = exported
    monkeypatch.chdir(root)
    ns = {}
    capsys.readouterr()
    exec(compile(deploy_snippets()[lib], f"docs/downstream.md ({lib})", "exec"), ns)
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    top = tc.classes[int(logits.argmax())]
    assert printed == top
    if lib == "timm":
        torch.testing.assert_close(ns["logits"].detach(), logits, rtol=1e-5, atol=1e-5)
    elif lib == "onnxruntime":
        torch.testing.assert_close(torch.from_numpy(ns["logits"]), logits, rtol=1e-4, atol=1e-4)
    else:
        probs = logits.softmax(1)[0]
        for p in ns["predictions"]:
            assert p["score"] == pytest.approx(float(probs[tc.classes.index(p["label"])]), abs=2e-3)
