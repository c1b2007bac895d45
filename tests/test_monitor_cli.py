"""`fastmae score` and `fastmae drift` end to end on a tiny model: outputs, exit codes,
escaping of hostile file names, skipped files, and the user's files left untouched."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastmae.cli import main

from .downstream_helpers import save_checkpoint, tiny_mae

HOSTILE = "<img src=x onerror=alert(1)>.jpg"


def blob(rng, size=16, brightness=1.0, square=False):
    low = rng.random((4, 4, 3))
    img = np.asarray(Image.fromarray((low * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR),
                     dtype=np.float64)
    img = img * brightness + rng.normal(0, 6, img.shape)
    if square:
        img[5:11, 5:11] = 255
    return Image.fromarray(img.clip(0, 255).astype(np.uint8), "RGB")


def folder(root, n, seed, **kw) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        blob(rng, **kw).save(root / f"{i:03d}.png")
    return root


@pytest.fixture
def setup(tmp_path):
    ckpt = save_checkpoint(tiny_mae(), tmp_path / "ckpt.pth")
    ref = folder(tmp_path / "ref", 24, seed=1)
    data = tmp_path / "data" / "test"
    folder(data / "good", 6, seed=2)
    folder(data / "square", 5, seed=3, square=True)
    gt = tmp_path / "data" / "ground_truth" / "square"
    gt.mkdir(parents=True)
    for i in range(5):
        m = np.zeros((16, 16), np.uint8)
        m[5:11, 5:11] = 255
        Image.fromarray(m).save(gt / f"{i:03d}_mask.png")
    blob(np.random.default_rng(4)).save(data / "good" / HOSTILE, format="JPEG")
    (data / "good" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return tmp_path, ckpt, ref, data


def digest(root: Path) -> dict:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_score_writes_outputs_escapes_names_and_skips_bad_files(setup, capsys):
    tmp, ckpt, ref, data = setup
    before = digest(tmp / "data"), digest(ref)
    out = tmp / "report"
    rc = main(["score", "--checkpoint", str(ckpt), "--reference", str(ref), "--data", str(data),
               "--out", str(out), "--save-reference", str(tmp / "ref.safetensors"), "--fpr", "0.1",
               "--device", "cpu", "--kernels", "torch", "--top", "3"])
    assert rc == 0
    assert (digest(tmp / "data"), digest(ref)) == before  # nothing the user gave is modified
    res = json.loads((out / "scores.json").read_text())
    paths = [r["path"] for r in res["images"]]
    assert len(paths) == 12 and any(p.endswith(HOSTILE) for p in paths)
    assert [s["path"].endswith("broken.png") for s in res["skipped"]] == [True]
    assert set(res["images"][0]) >= {"path", "score", "recon", "patch_novelty", "novelty", "verdict"}
    m = res["metrics"]
    assert 0.0 <= m["image_auroc"] <= 1.0 and 0.0 <= m["pixel_auroc"] <= 1.0 and 0.0 <= m["pro"] <= 1.0
    assert m["n_good"] == 7 and m["n_defective"] == 5
    assert res["images_per_s"] > 0
    html = (out / "report.html").read_text()
    assert "<img src=x" not in html and "onerror=alert(1)>" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;.jpg" in html
    assert "http://" not in html and "https://" not in html  # nothing loaded from a network
    assert html.count("data:image/png;base64,") >= 3
    assert len(list((out / "heatmaps").glob("*.png"))) >= 3
    assert (out / "scores.csv").read_text().splitlines()[0].startswith("path,score,")
    # The saved reference scores without re-reading the folder, the same way.
    out2 = tmp / "report2"
    assert main(["score", "--checkpoint", str(ckpt), "--reference", str(tmp / "ref.safetensors"),
                 "--data", str(data), "--out", str(out2), "--device", "cpu", "--kernels", "torch"]) == 0
    res2 = json.loads((out2 / "scores.json").read_text())
    assert [r["score"] for r in res2["images"]] == [r["score"] for r in res["images"]]


def test_score_user_errors_exit_2(setup, capsys):
    tmp, ckpt, ref, data = setup
    small = folder(tmp / "small", 7, seed=5)
    rc = main(["score", "--checkpoint", str(ckpt), "--reference", str(small), "--data", str(data),
               "--out", str(tmp / "o"), "--device", "cpu", "--kernels", "torch"])
    err = capsys.readouterr().err
    assert rc == 2 and "has 7 readable image(s)" in err and "at least 20" in err
    assert len(err.strip().splitlines()) == 1
    rc = main(["score", "--checkpoint", str(ckpt), "--reference", str(tmp / "nowhere"), "--data",
               str(data), "--out", str(tmp / "o"), "--device", "cpu", "--kernels", "torch"])
    assert rc == 2 and "neither a folder" in capsys.readouterr().err
    rc = main(["score", "--checkpoint", str(ckpt), "--reference", str(ref), "--data", str(data),
               "--out", str(tmp / "o"), "--device", "cpu", "--kernels", "torch", "--fpr", "2"])
    assert rc == 2 and "--fpr" in capsys.readouterr().err
    rc = main(["score", "--checkpoint", str(ckpt), "--reference", str(ref), "--data", str(data),
               "--out", str(tmp / "o"), "--device", "cpu", "--kernels", "torch", "--feature-layer", "99"])
    assert rc == 2 and "feature layer must be in 1.." in capsys.readouterr().err
    rc = main(["score", "--checkpoint", str(ckpt), "--reference", str(ref), "--data", str(data),
               "--out", str(tmp / "o"), "--device", "cpu", "--kernels", "torch", "--compile", "sometimes"])
    assert rc == 2 and "compile" in capsys.readouterr().err


def test_drift_exit_codes(setup, capsys):
    tmp, ckpt, ref, _ = setup
    same = folder(tmp / "same", 20, seed=7)
    dark = folder(tmp / "dark", 20, seed=7, brightness=0.6)
    js = tmp / "drift.json"
    rc = main(["drift", "--checkpoint", str(ckpt), "--reference", str(ref), "--data", str(same),
               "--json", str(js), "--device", "cpu", "--kernels", "torch", "--permutations", "200"])
    res = json.loads(js.read_text())
    assert rc == 0 and res["drift"] is False and res["p_value"] > 0.01
    rc = main(["drift", "--checkpoint", str(ckpt), "--reference", str(ref), "--data", str(dark),
               "--json", str(js), "--report", str(tmp / "drift.html"), "--device", "cpu", "--kernels", "torch",
               "--permutations", "200"])
    res = json.loads(js.read_text())
    assert rc == 1 and res["drift"] is True and res["p_value"] < 0.01
    assert set(res) >= {"mmd2", "frechet_distance", "novelty", "bandwidth", "images_per_s"}
    assert res["compiled"] is False  # --compile auto: eager on the CPU
    assert "<svg" in (tmp / "drift.html").read_text()
    rc = main(["drift", "--checkpoint", str(ckpt), "--reference", str(ref), "--data", str(dark),
               "--alpha", "1.5", "--device", "cpu", "--kernels", "torch"])
    assert rc == 2
    capsys.readouterr()
    rc = main(["drift", "--checkpoint", str(tmp / "missing.pth"), "--reference", str(ref),
               "--data", str(dark), "--device", "cpu", "--kernels", "torch"])
    assert rc == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
