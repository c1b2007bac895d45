"""`fastmae demo`: the pipeline end to end on a stand-in dataset (fast), and the real
reduced demo on the built-in dataset showing that pretraining beats scratch (slow)."""
import json

import pytest

import fastmae.data
from fastmae.cli import main
from fastmae.downstream.demo import DemoConfig, run_demo

from .downstream_helpers import split_folder

TINY = dict(embed_dim=32, depth=2, num_heads=4, decoder_embed_dim=16, decoder_depth=1,
            decoder_num_heads=2, mlp_ratio=2.0)


def test_demo_pipeline_on_stand_in_data(tmp_path, monkeypatch):
    root = split_folder(tmp_path / "builtin", train=8, val=3)
    monkeypatch.setattr(fastmae.data, "builtin_dataset", lambda split="train": root / split)
    out = tmp_path / "demo"
    cfg = DemoConfig(output_dir=str(out), model="mae_vit_micro_patch4", model_overrides=TINY, img_size=16,
                     pretrain_epochs=2, pretrain_batch_size=8, labels_per_class=2, finetune_epochs=2,
                     finetune_batch_size=4, warmup_epochs=1, kernels="torch", loader="torch", num_workers=0,
                     device="cpu", progress=False)
    result = run_demo(cfg, log=lambda m: None)
    saved = json.loads((out / "demo.json").read_text())
    assert saved["pretrained_acc"] == pytest.approx(result["pretrained_acc"])
    assert {"pretrained_acc", "scratch_acc", "knn_acc", "checkpoint"} <= set(saved)
    assert saved["train_images"] == 6 and saved["val_images"] == 9 and saved["pretrain_images"] == 24
    assert saved["pretrain_steps"] == 6
    for name in ("report.md", "reconstructions.png", "pretrain_loss.png", "finetune_accuracy.png",
                 "finetune-pretrained/confusion_matrix.png", "finetune-scratch/confusion_matrix.png"):
        assert (out / name).stat().st_size > 0, name
    report = (out / "report.md").read_text()
    assert f"**{saved['pretrained_acc']:.1f}%**" in report and f"{saved['scratch_acc']:.1f}%" in report
    assert "(finetune-pretrained/confusion_matrix.png)" in report
    from pathlib import Path
    assert Path(saved["checkpoint"]).is_file()


def test_demo_refuses_a_non_empty_output_dir(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("user data")
    assert main(["demo", "--output-dir", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "user data"


@pytest.mark.slow
def test_demo_pretraining_beats_scratch(tmp_path, monkeypatch):
    """The --quick demo on the real built-in dataset (about 8 minutes on one CPU core), as a
    CPU user runs it: with the tests' TRITON_INTERPRET=1, fine-tuning's "auto" kernels would
    run in the Triton interpreter (over half an hour)."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    from fastmae.downstream.demo import quick_config
    cfg = quick_config(output_dir=str(tmp_path / "demo"), kernels="torch", progress=False)
    r = run_demo(cfg, log=lambda m: None)
    assert r["pretrained_acc"] > r["scratch_acc"] + 5.0, r
