"""`fastmae demo --monitor`: the whole story on a shrunken inspection dataset with a tiny model
(fast), the refusals, and the real --quick run on the built-in dataset (slow)."""
import json
import shlex

import pytest
import torch

from fastmae.cli import build_parser, main
from fastmae.commands.train import config_from_args
from fastmae.data import inspection
from fastmae.monitor.demo import QUICK, RECIPE, recipe, run_monitor_demo
from fastmae.settings import ConfigError
from fastmae.train.config import resolve

TINY = dict(patch_size=8, embed_dim=32, depth=4, num_heads=4, decoder_embed_dim=16, decoder_depth=1,
            decoder_num_heads=2, mlp_ratio=2.0)
SMALL = dict(model_overrides=TINY, epochs=2, batch_size=8, warmup_epochs=1, rounds=1,
             drift_images=12, permutations=199)


@pytest.fixture
def small_dataset(tmp_path, monkeypatch):
    """The inspection dataset with 24 good training parts, 6 good and 2 of each defect in test/."""
    monkeypatch.setenv("FASTMAE_CACHE", str(tmp_path / "cache"))
    counts = {k: 24 if k == "train/good" else 6 if k == "test/good" else 2 for k in inspection.COUNTS}
    monkeypatch.setattr(inspection, "COUNTS", counts)
    return tmp_path


def test_monitor_demo_runs_the_story_and_writes_its_record(small_dataset):
    out = small_dataset / "demo"
    lines = []
    res = run_monitor_demo(out, seed=3, device="cpu", loader="torch", kernels="torch", num_workers=0,
                           log=lines.append, **SMALL)
    saved = json.loads((out / "monitor.json").read_text())
    assert saved["image_auroc"] == pytest.approx(res["image_auroc"])
    for key in ("image_auroc", "pixel_auroc", "pro"):
        assert 0.0 <= saved[key] <= 1.0, key
    assert set(saved["image_auroc_per_class"]) == set(inspection.DEFECTS)
    assert saved["test_images"] == 14 and saved["train_images"] == 24
    assert sum(v["images"] for v in saved["flagged"].values()) == 14
    assert sum(v["flagged"] for v in saved["flagged"].values()) == saved["n_flagged"]
    assert saved["pretrain"]["steps"] == 2 * 3  # 24 images, batch 8, 2 epochs
    assert saved["recipe"]["epochs"] == 2 and saved["recipe"]["feature_center"] == RECIPE["feature_center"]
    for name in ("fresh_good", "darkened"):
        d = saved["drift"][name]
        assert 0.0 < d["p_value"] <= 1.0 and d["n_new"] == 12 and d["n_reference"] > 0
        assert d["drift"] == (d["p_value"] < RECIPE["alpha"])
        assert (out / "drift" / f"{name}.html").stat().st_size > 0
        assert len(list((out / "drift" / name).glob("*.png"))) == 12
    assert set(saved["seconds"]) == {"pretrain", "score", "drift", "total"}
    assert {"fastmae", "torch", "python"} <= set(saved["versions"])
    assert "SYNTHETIC" in saved["dataset"]

    html = (out / "score" / "report.html").read_text()
    assert "<html" in html.lower() and "image AUROC" in html
    assert (out / "reference.safetensors").is_file() and (out / "train.yaml").is_file()
    assert saved["heatmaps"] and all((out / "score" / h).is_file() for h in saved["heatmaps"])

    cmds = saved["commands"]
    assert set(cmds) == {"train", "score", "drift_fresh_good", "drift_darkened"}
    train = shlex.split(cmds["train"])
    assert train[:2] == ["fastmae", "train"]
    for flag, value in (("--epochs", "2"), ("--min-crop-scale", str(RECIPE["min_crop_scale"])),
                        ("--img-size", "64"), ("--config", str(out / "train.yaml"))):
        assert train[train.index(flag) + 1] == value, flag
    # the train command line resolves to the very config the run trained with
    args = build_parser("train").parse_args(train[1:])
    ran = torch.load(saved["pretrain"]["checkpoint"], map_location="cpu", weights_only=True)["args"]
    again = resolve(config_from_args(args)).to_dict()
    assert {k: v for k, v in again.items() if k != "num_workers"} == \
        {k: v for k, v in ran.items() if k != "num_workers"}
    score = build_parser("score").parse_args(shlex.split(cmds["score"])[1:])
    assert (score.components, score.feature_layer, score.feature_center, score.recon_smooth, score.sigma,
            score.rounds, score.fpr) == (",".join(RECIPE["components"]), RECIPE["feature_layer"],
                                         RECIPE["feature_center"], RECIPE["recon_smooth"], RECIPE["sigma"],
                                         1, RECIPE["fpr"])
    assert score.save_reference == str(out / "reference.safetensors") and score.data.endswith("test")
    assert "--permutations 199" in cmds["drift_darkened"]

    report = (out / "report.md").read_text()
    assert "synthetic" in report.lower() and "(score/report.html)" in report
    assert f"**{saved['image_auroc']:.3f}**" in report and f"**{saved['pixel_auroc']:.3f}**" in report
    assert f"{saved['drift']['darkened']['p_value']:.4g}" in report
    assert cmds["score"] in report and cmds["train"] in report
    assert any(line.startswith("[3/4]") for line in lines) and lines[-1].startswith("done in")


def test_train_command_without_model_overrides_needs_no_config_file(tmp_path, monkeypatch):
    """The recipe's model is the registered one: its command line is plain flags, and they
    resolve to the config the demo trains with."""
    import fastmae.train
    from fastmae.monitor import demo
    seen = {}
    monkeypatch.setattr(fastmae.train, "pretrain", lambda cfg, log: seen.setdefault("cfg", cfg))
    assert recipe()["model_overrides"] == {}
    _, command = demo._pretrain(recipe(), tmp_path / "good", tmp_path, seed=0, device="cpu", loader="torch",
                                kernels="torch", num_workers=0, log=print)
    assert "--config" not in command and not (tmp_path / "train.yaml").exists()
    args = build_parser("train").parse_args(shlex.split(command)[1:])
    again = resolve(config_from_args(args)).to_dict()
    want = resolve(seen["cfg"]).to_dict()
    for cfg in (again, want):
        cfg.pop("num_workers")
    assert again == want


def test_recipe_quick_and_overrides():
    assert recipe(quick=True)["epochs"] == QUICK["epochs"] == 50 and recipe()["epochs"] == 150
    assert recipe(epochs=3)["epochs"] == 3 and RECIPE["epochs"] == 150
    with pytest.raises(ConfigError, match="epoch"):
        recipe(epoch=3)


def test_monitor_demo_refuses_a_non_empty_output_dir(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("user data")
    assert main(["demo", "--monitor", "--output-dir", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("flags", [["--labels-per-class", "5"], ["--finetune-epochs", "3"], ["--curve"]])
def test_monitor_demo_refuses_classification_flags(tmp_path, capsys, flags):
    out = tmp_path / "new"
    assert main(["demo", "--monitor", "--output-dir", str(out)] + flags) == 2
    err = capsys.readouterr().err
    assert flags[0] in err and "--monitor" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.slow
def test_monitor_demo_quick_finds_defects(tmp_path):
    """`fastmae demo --monitor --quick` on the real built-in inspection dataset (CPU minutes)."""
    out = tmp_path / "demo"
    # torch ops: the tests run Triton in its interpreter, far too slow for a real pretraining
    assert main(["demo", "--monitor", "--quick", "--device", "cpu", "--kernels", "torch",
                 "--output-dir", str(out)]) == 0
    saved = json.loads((out / "monitor.json").read_text())
    assert saved["recipe"]["epochs"] == QUICK["epochs"]
    assert saved["image_auroc"] > 0.7, saved  # measured 0.829


def test_monitor_demo_stops_when_pretraining_is_interrupted(small_dataset, monkeypatch):
    """A Ctrl-C / SIGTERM during pretraining ends the demo (one error line), not scoring a half model."""
    import fastmae.train
    from fastmae.train.loop import PretrainResult
    from fastmae.settings import TrainingError
    stopped = PretrainResult(small_dataset / "x", small_dataset / "x" / "checkpoint-0000005.pth", 1.0, 5, 1.0,
                             interrupted=True)
    monkeypatch.setattr(fastmae.train, "pretrain", lambda cfg, log=print: stopped)
    out = small_dataset / "demo"
    with pytest.raises(TrainingError, match="interrupted at step 5"):
        run_monitor_demo(out, device="cpu", loader="torch", kernels="torch", num_workers=0, log=lambda m: None,
                         **SMALL)
    assert not (out / "score").exists() and not (out / "monitor.json").exists()
