"""fastmae label-curve: a tiny curve end to end, resuming after a kill, the labels-saved
interpolation, and bad input."""
import json
import math
import multiprocessing as mp
import time

import pytest

from fastmae.cli import main
from fastmae.downstream import curve_report
from fastmae.downstream import label_curve as lc
from fastmae.settings import ConfigError, DataError
from tests.downstream_helpers import image_folder, save_checkpoint, tiny_mae


def _cfg(tmp_path, ckpt, data, **kw):
    base = dict(checkpoint=str(ckpt), data=str(data), budgets=(1, 3), seeds=1, epochs=1, batch_size=4,
                blr=1e-3, loader="torch", num_workers=0, device="cpu", progress=False,
                output_dir=str(tmp_path / "curve"))
    return lc.CurveConfig(**{**base, **kw})


@pytest.fixture
def setup(tmp_path):
    ckpt = save_checkpoint(tiny_mae(), tmp_path / "mae.pth")
    data = image_folder(tmp_path / "labelled", per_class=6)
    return ckpt, data


@pytest.mark.slow
def test_tiny_curve_end_to_end_and_extended(tmp_path, setup):
    ckpt, data = setup
    out = tmp_path / "curve"
    lc.label_curve(_cfg(tmp_path, ckpt, data, budgets=(1,)), log=lambda m: None)
    first = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    assert len(first) == 2
    logs = []
    r = lc.label_curve(_cfg(tmp_path, ckpt, data), log=logs.append)  # budgets (1, 3)
    assert "2 already done, 2 to run" in logs[0]
    after = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    assert all(after[n] == t for n, t in first.items()), "a finished point was run again"
    assert r["complete"]
    assert len(r["runs"]) == 4  # 2 budgets x 1 seed x 2 arms
    assert {(x["labels_per_class"], x["arm"]) for x in r["runs"]} == {
        (1, "pretrained"), (1, "scratch"), (3, "pretrained"), (3, "scratch")}
    # the same held-out images for every run; 1 and 3 labelled images per class
    assert len({x["val_images"] for x in r["runs"]}) == 1
    assert sorted({x["train_images"] for x in r["runs"]}) == [3, 9]
    for x in r["runs"]:
        assert 0.0 <= x["acc1"] <= 100.0
    on_disk = json.loads((out / "curve.json").read_text())
    assert on_disk["points"] == json.loads(json.dumps(r["points"]))
    assert {"labels_saved", "headline", "split", "config"} <= set(on_disk)
    assert (out / "curve.md").read_text().count("\n| ") >= 4
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((out / "runs").rglob("*.pth"))  # per-run checkpoints are dropped
    # the held-out split never overlaps the labelled pool
    train = {ln.split("\t")[0] for ln in (out / "split" / "train.txt").read_text().splitlines()}
    val = {ln.split("\t")[0] for ln in (out / "split" / "val.txt").read_text().splitlines()}
    assert train and val and not (train & val)
    with pytest.raises(ConfigError, match="another recipe"):
        lc.label_curve(_cfg(tmp_path, ckpt, data, blr=2e-3), log=lambda m: None)


def _run_cli(argv):
    import os
    os.environ["OMP_NUM_THREADS"] = "1"
    main(argv)


@pytest.mark.slow
def test_resume_after_a_kill_reruns_nothing_finished(tmp_path, setup):
    ckpt, data = setup
    out = tmp_path / "curve"
    argv = ["label-curve", "--checkpoint", str(ckpt), "--data", str(data), "--labels-per-class", "1,2,3",
            "--seeds", "1", "--epochs", "1", "--batch-size", "4", "--loader", "torch", "--num-workers", "0",
            "--device", "cpu", "--out", str(out)]
    proc = mp.get_context("spawn").Process(target=_run_cli, args=(argv,))
    proc.start()
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "runs").glob("*.json"))) < 2:
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no clean-up of any kind
    proc.join()
    finished = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    assert 2 <= len(finished) < 6, "the kill should land mid-curve"
    assert main(argv) == 0
    after = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    assert len(after) == 6
    assert all(after[n] == t for n, t in finished.items()), "a finished point was run again"
    assert json.loads((out / "curve.json").read_text())["complete"]


def test_knn_protocol_compares_with_random_init_features(tmp_path, setup):
    ckpt, data = setup
    r = lc.label_curve(_cfg(tmp_path, ckpt, data, protocol="knn", budgets=(2,)), log=lambda m: None)
    assert r["complete"] and len(r["runs"]) == 2
    assert (tmp_path / "curve" / "runs" / "random-init-seed0.safetensors").is_file()


def test_labels_needed_interpolates_in_log_space():
    curve = [(1.0, 20.0), (10.0, 40.0), (100.0, 60.0)]
    x, how = curve_report.labels_needed(30.0, curve)
    assert how == "interpolated" and x == pytest.approx(math.sqrt(10.0))
    assert curve_report.labels_needed(50.0, curve)[0] == pytest.approx(math.sqrt(1000.0))
    assert curve_report.labels_needed(10.0, curve) == (1.0, "at or below the smallest budget")
    assert curve_report.labels_needed(61.0, curve) == (None, "not reached")


def test_labels_saved_and_summary():
    runs = [{"labels_per_class": b, "arm": a, "acc1": acc} for b, a, acc in [
        (1, "pretrained", 30.0), (1, "pretrained", 34.0), (10, "pretrained", 50.0),
        (1, "scratch", 10.0), (10, "scratch", 32.0), (None, "scratch", 55.0), (None, "pretrained", 70.0)]]
    rows = curve_report.summarise(runs, [1, 10, None], per_class_all=100.0)
    p1 = next(r for r in rows if r["labels_per_class"] == 1 and r["arm"] == "pretrained")
    assert p1["mean"] == 32.0 and p1["std"] == pytest.approx(math.sqrt(8.0)) and p1["n"] == 2
    saved = {s["scratch_labels_per_class"]: s for s in curve_report.labels_saved(rows)}
    assert saved[1]["pretrained_labels_per_class"] == 1.0          # already beaten at the smallest
    assert saved[10]["pretrained_labels_per_class"] == 1.0         # 32% = the pretrained mean at 1
    t = (55.0 - 50.0) / (70.0 - 50.0)                               # between 10 and all (=100)
    assert saved[None]["pretrained_labels_per_class"] == pytest.approx(10 ** (1 + t))
    assert saved[None]["ratio"] == pytest.approx(100 / 10 ** (1 + t))
    assert "all (100)" in curve_report.headline(list(saved.values()))


def test_bad_input(tmp_path, setup, capsys):
    ckpt, data = setup
    assert lc.parse_budgets("5, 1,all,2") == (1, 2, 5, None)
    for bad in ("0", "x", ""):
        with pytest.raises(ConfigError):
            lc.parse_budgets(bad)
    with pytest.raises(DataError, match="only 4 training images"):  # 6 per class, 2 held out
        lc.label_curve(_cfg(tmp_path, ckpt, data, budgets=(5,)), log=lambda m: None)
    with pytest.raises(ConfigError, match="--protocol"):
        lc.label_curve(_cfg(tmp_path, ckpt, data, protocol="svm"), log=lambda m: None)
    assert main(["label-curve", "--checkpoint", str(ckpt), "--data", str(data), "--labels-per-class",
                 "1,two", "--out", str(tmp_path / "c2")]) == 2
    assert "neither a whole number" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_shows_the_curve(tmp_path, monkeypatch):
    import fastmae.data
    from fastmae.downstream.demo import DemoConfig, run_demo
    from tests.downstream_helpers import split_folder
    root = split_folder(tmp_path / "builtin", train=6, val=3)
    monkeypatch.setattr(fastmae.data, "builtin_dataset", lambda split="train": root / split)
    monkeypatch.setattr(lc, "QUICK", dict(budgets=(1, None), seeds=1, epochs=1, batch_size=4, blr=1e-3))
    tiny = dict(embed_dim=32, depth=2, num_heads=4, decoder_embed_dim=16, decoder_depth=1,
                decoder_num_heads=2, mlp_ratio=2.0)
    out = tmp_path / "demo"
    r = run_demo(DemoConfig(output_dir=str(out), model_overrides=tiny, img_size=16, pretrain_epochs=1,
                            pretrain_batch_size=8, labels_per_class=2, finetune_epochs=1, finetune_batch_size=4,
                            warmup_epochs=1, kernels="torch", loader="torch", num_workers=0, device="cpu",
                            progress=False, curve=True), log=lambda m: None)
    assert len(r["label_curve"]["points"]) == 4
    assert (out / "label-curve" / "curve.png").is_file()
    report = (out / "report.md").read_text()
    assert "![label curve](label-curve/curve.png)" in report and r["label_curve"]["headline"] in report


@pytest.mark.slow
def test_workers_give_the_serial_results(tmp_path, setup):
    ckpt, data = setup
    serial = lc.label_curve(_cfg(tmp_path, ckpt, data, protocol="knn", budgets=(1, 2)), log=lambda m: None)
    par = lc.label_curve(_cfg(tmp_path, ckpt, data, protocol="knn", budgets=(1, 2), workers=2,
                              output_dir=str(tmp_path / "par")), log=lambda m: None)
    acc = lambda r: sorted((x["point"], x["acc1"]) for x in r["runs"])  # noqa: E731
    assert par["complete"] and acc(par) == acc(serial)


def test_headline_warns_when_the_gains_are_noise():
    rows = curve_report.summarise([{"labels_per_class": 10, "arm": a, "acc1": acc} for a, acc in
                                   (("pretrained", 16.0), ("scratch", 14.0))], [10], per_class_all=100.0)
    se = curve_report.standard_error(16.0, 500)
    assert se == pytest.approx(100 * math.sqrt(0.16 * 0.84 / 500))
    assert curve_report.within_noise(rows, 500) == pytest.approx(se)       # 2 points < 2 x 1.64
    assert curve_report.within_noise(rows, 100_000) is None                 # 2 points >> 2 x 0.12
    text = curve_report.headline(curve_report.labels_saved(rows), curve_report.within_noise(rows, 500))
    assert "noise, not a measured saving" in text
