"""Each downstream command end to end on a tiny model and a handful of generated images."""
import importlib
import json

import pytest
import torch

from fastmae import interop
from fastmae.cli import main
from fastmae.downstream.classifier import VisionTransformer, encoder_config, load_encoder
from fastmae.downstream.embed import read_embeddings
from fastmae.downstream.mixup import Mixup
from fastmae.settings import TrainingError

from .downstream_helpers import image_folder, save_checkpoint, split_folder, tiny_mae

FAST = ["--loader", "torch", "--num-workers", "0", "--device", "cpu"]


@pytest.fixture
def ckpt(tmp_path):
    return save_checkpoint(tiny_mae(), tmp_path / "mae.pth")


@pytest.fixture
def data(tmp_path):
    return split_folder(tmp_path / "data", train=6, val=3)


def _json_line(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _error(capsys, argv, match):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err


def test_finetune_few_labels(tmp_path, ckpt, data, capsys):
    out = tmp_path / "ft"
    assert main(["finetune", "--checkpoint", str(ckpt), "--data", str(data), "--labels-per-class", "3",
                 "--epochs", "2", "--batch-size", "4", "--warmup-epochs", "1", "--output-dir", str(out),
                 *FAST]) == 0
    printed = _json_line(capsys)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_images"] == 9 and metrics["labelled_pool"] == 18 and metrics["val_images"] == 9
    assert printed["best_acc1"] == pytest.approx(metrics["best_acc1"], abs=0.01)
    assert sum(map(sum, metrics["confusion_matrix"])) == 9
    assert metrics["layer_decay"] == 0.65 and metrics["effective_batch"] == 4
    assert metrics["lr"] == pytest.approx(5e-4 * 4 / 256)
    best = torch.load(out / "checkpoint-best.pth", weights_only=True)
    assert best["classes"] == ["blue", "green", "red"] and "head.weight" in best["model"]
    assert (out / "confusion_matrix.png").stat().st_size > 0 and (out / "loss.png").exists()
    # resume continues after the last finished epoch
    assert main(["finetune", "--checkpoint", str(ckpt), "--data", str(data), "--labels-per-class", "3",
                 "--epochs", "3", "--batch-size", "4", "--warmup-epochs", "1", "--output-dir", str(out),
                 "--resume", str(out / "checkpoint-last.pth"), *FAST]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [0, 1, 2]


def test_finetune_scratch_fraction_holdout_mixup(tmp_path, ckpt, capsys):
    data = image_folder(tmp_path / "flat", per_class=10)
    out = tmp_path / "sc"
    assert main(["finetune", "--checkpoint", str(ckpt), "--from-scratch", "--data", str(data),
                 "--label-fraction", "0.5", "--holdout-fraction", "0.2", "--cls-token", "--mixup", "0.8",
                 "--cutmix", "1.0", "--epochs", "1", "--batch_size", "4", "--warmup_epochs", "0",
                 "--img-size", "24", "--output_dir", str(out), *FAST]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["from_scratch"] and m["val_images"] == 6 and m["train_images"] == 12  # 8 left per class
    assert m["config"]["global_pool"] is False
    best = torch.load(out / "checkpoint-best.pth", weights_only=True)
    assert best["classifier_config"]["img_size"] == [24, 24]
    assert best["model"]["pos_embed"].shape == (1, 37, 32)


def test_mixup_targets():
    mix = Mixup(4, mixup_alpha=0.8, cutmix_alpha=1.0, smoothing=0.1, seed=0)
    x, y = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    for _ in range(8):
        xm, t = mix(x, y)
        assert xm.shape == x.shape
        torch.testing.assert_close(t.sum(1), torch.ones(6))
        # each target mixes the sample's own class with the reversed batch's class only
        lam = t[0, 0] - 0.1 / 4  # y[0] = 0 and y[-1] = 1
        assert 0.0 <= float(lam) <= 0.9 + 1e-6
    cut = Mixup(4, mixup_alpha=0.0, cutmix_alpha=1.0, smoothing=0.0, seed=1)
    xm, t = cut(x, y)
    changed = (xm != x).any(1).float().mean((1, 2))  # area taken from the partner image
    torch.testing.assert_close(t[0, 0], 1 - changed[0])


def test_linprobe_and_knn(tmp_path, ckpt, data, capsys):
    out = tmp_path / "lp"
    assert main(["linprobe", "--checkpoint", str(ckpt), "--data", str(data), "--epochs", "2",
                 "--batch-size", "6", "--warmup-epochs", "1", "--cache-features", "--output-dir", str(out),
                 *FAST]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["pool"] == "cls" and len(m["history"]) == 2 and m["train_images"] == 18
    err = capsys.readouterr().err  # not a terminal: one plain line per epoch, no bar
    lines = [ln for ln in err.splitlines() if ln.startswith("linear probe: ")]
    assert "\r" not in err and [ln.split(",")[0] for ln in lines] == ["linear probe: epoch 1/2",
                                                                      "linear probe: epoch 2/2"]
    assert (out / "probe-best.pth").exists() and (out / "confusion_matrix.png").exists()
    assert main(["linprobe", "--checkpoint", str(ckpt), "--data", str(data), "--epochs", "1",
                 "--batch-size", "6", "--global-pool", "--optimizer", "sgd", "--output-dir", str(out / "b"),
                 *FAST]) == 0
    assert json.loads((out / "b" / "metrics.json").read_text())["pool"] == "avg"
    capsys.readouterr()
    assert main(["knn", "--checkpoint", str(ckpt), "--data", str(data), "--k", "5",
                 "--out", str(tmp_path / "knn.json"), *FAST]) == 0
    printed = _json_line(capsys)
    saved = json.loads((tmp_path / "knn.json").read_text())
    assert printed["k"] == 5 and saved["n"] == 9 and 0 <= saved["acc1"] <= 100
    assert sum(map(sum, saved["confusion_matrix"])) == 9


@pytest.mark.parametrize("suffix", [".safetensors", ".npy"])
def test_embed(tmp_path, ckpt, data, capsys, suffix):
    out = tmp_path / f"emb{suffix}"
    assert main(["embed", str(data / "val"), "--checkpoint", str(ckpt), "--out", str(out), "--pool", "avg"]) == 0
    feats, names = read_embeddings(out)
    assert feats.shape == (9, 32) and len(names) == 9 and names == sorted(names)
    assert names[0].endswith("blue/blue00.png")
    # row i is the feature of file i: compare with a direct forward of one image
    from fastmae.downstream.images import load_batch
    mae = tiny_mae()
    mae.load_state_dict(torch.load(ckpt, weights_only=True)["model"])
    vit = VisionTransformer(**encoder_config(mae.config), num_classes=0, global_pool=False).eval()
    load_encoder(vit, mae.state_dict())
    with torch.no_grad():
        ref = vit.features(load_batch([names[4]], 16), "avg")
    torch.testing.assert_close(feats[4:5], ref, rtol=1e-5, atol=1e-5)
    # never overwrite unless --force
    before = out.read_bytes()
    _error(capsys, ["embed", str(data / "val"), "--checkpoint", str(ckpt), "--out", str(out)], "already exists")
    assert out.read_bytes() == before
    assert main(["embed", str(data / "val"), "--checkpoint", str(ckpt), "--out", str(out), "--force"]) == 0
    _error(capsys, ["embed", str(data / "val"), "--checkpoint", str(ckpt), "--out", str(tmp_path / "e.csv")],
           ".safetensors or .npy")


def test_visualize(tmp_path, ckpt, data, capsys):
    out = tmp_path / "rec.png"
    assert main(["visualize", str(ckpt), str(data / "val" / "red"), str(data / "val" / "blue" / "blue00.png"),
                 "--mask-ratio", "0.5", "--seed", "2", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _error(capsys, ["visualize", str(ckpt), str(data / "val"), "--out", str(out)], "already exists")
    _error(capsys, ["visualize", str(ckpt), str(data / "val"), "--out", str(tmp_path / "x.png"),
                    "--mask-ratio", "1.0"], "--mask-ratio")
    _error(capsys, ["visualize", str(ckpt), str(tmp_path / "nope"), "--out", str(tmp_path / "y.png")],
           "does not exist")


def test_export_timm_loads_in_timm(tmp_path, ckpt, capsys):
    timm = pytest.importorskip("timm")
    from safetensors.torch import load_file
    out = tmp_path / "enc.safetensors"
    assert main(["export", str(ckpt), "--format", "timm", "--out", str(out)]) == 0
    sd = load_file(str(out))
    mae = tiny_mae()
    mae.load_state_dict(torch.load(ckpt, weights_only=True)["model"])
    from functools import partial
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0, num_classes=0,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6)).eval()
    vit.load_state_dict(sd, strict=True)  # everything but a head (none with num_classes=0)
    with_head = timm.models.vision_transformer.VisionTransformer(
        img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0, num_classes=7,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))
    missing, unexpected = with_head.load_state_dict(sd, strict=False)
    assert sorted(missing) == ["head.bias", "head.weight"] and unexpected == []
    imgs = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(vit.forward_features(imgs), mae.forward_features(imgs), rtol=1e-4, atol=1e-5)
    before = out.read_bytes()
    _error(capsys, ["export", str(ckpt), "--format", "timm", "--out", str(out)], "--force")
    assert out.read_bytes() == before


def test_export_hf_and_official(tmp_path, ckpt, capsys):
    pytest.importorskip("transformers")
    from transformers import ViTMAEForPreTraining
    mae = tiny_mae()
    mae.load_state_dict(torch.load(ckpt, weights_only=True)["model"])
    hf_dir = tmp_path / "hf"
    assert main(["export", str(ckpt), "--format", "hf", "--out", str(hf_dir)]) == 0
    back = interop.from_hf_vitmae(ViTMAEForPreTraining.from_pretrained(str(hf_dir)), kernels="torch")
    for k, v in mae.state_dict().items():
        torch.testing.assert_close(back.state_dict()[k], v, msg=k)
    _error(capsys, ["export", str(ckpt), "--format", "hf", "--out", str(hf_dir)], "already exists")
    from fastmae.downstream.pretrained import build_classifier
    from_hf, _ = build_classifier(3, checkpoint=hf_dir, global_pool=False)
    from_pth, _ = build_classifier(3, checkpoint=ckpt, global_pool=False)
    imgs = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(from_hf.eval().features(imgs), from_pth.eval().features(imgs))
    # the HF folder is itself a source for fine-tuning / export
    official = tmp_path / "official.pth"
    assert main(["export", str(hf_dir), "--format", "official", "--out", str(official)]) == 0
    raw = torch.load(official, weights_only=True)
    assert set(raw["model"]) == set(mae.state_dict())
    torch.testing.assert_close(raw["model"]["blocks.1.attn.qkv.weight"], mae.blocks[1].attn.qkv.weight)
    _error(capsys, ["export", str(ckpt), "--format", "official", "--out", str(tmp_path / "m.bin")], ".pth")


def test_user_errors_are_one_line(tmp_path, ckpt, data, capsys):
    _error(capsys, ["finetune", "--checkpoint", str(tmp_path / "missing.pth"), "--data", str(data), *FAST],
           "missing.pth")
    _error(capsys, ["finetune", "--checkpoint", str(ckpt), "--data", str(data), "--labels-per-class", "7",
                    "--output-dir", str(tmp_path / "o"), *FAST], "fewer than --labels-per-class 7")
    _error(capsys, ["finetune", "--checkpoint", str(ckpt), "--data", str(data), "--val", str(data / "train"),
                    "--output-dir", str(tmp_path / "o"), *FAST], "also training images")
    _error(capsys, ["finetune", "--model", "mae_vit_micro_patch4", "--data", str(data),
                    "--output-dir", str(tmp_path / "o"), *FAST], "--from-scratch")
    unlabelled = tmp_path / "unl"
    unlabelled.mkdir()
    (data / "val" / "red" / "red00.png").rename(unlabelled / "a.png")
    _error(capsys, ["knn", "--checkpoint", str(ckpt), "--data", str(unlabelled), *FAST], "no labels")


def test_precision_and_loss_errors_are_one_line(tmp_path, ckpt, data, capsys, monkeypatch):
    """Every labelled run resolves --precision the way train does, and a loss that is not
    finite is a TrainingError, as in pretraining."""
    common = ["--checkpoint", str(ckpt), "--data", str(data), "--batch-size", "4", *FAST]
    run = [*common, "--epochs", "1", "--output-dir", str(tmp_path / "o")]
    if not torch.cuda.is_available():
        for argv in (["finetune", *run], ["linprobe", *run], ["knn", *common]):
            _error(capsys, [*argv, "--precision", "fp16"], "--precision fp16 needs a CUDA GPU")
    _error(capsys, ["finetune", *run, "--precision", "fp8"], "unknown precision 'fp8'")
    _error(capsys, ["embed", str(data / "val"), "--checkpoint", str(ckpt), "--out", str(tmp_path / "e.npy"),
                    "--device", "cpu", "--precision", "fp8"], "unknown precision 'fp8'")

    ft = importlib.import_module("fastmae.downstream.finetune")  # the package's `finetune` is the function
    real = ft.F.cross_entropy
    monkeypatch.setattr(ft, "F", type("F", (), {"cross_entropy": staticmethod(
        lambda *a, **k: real(*a, **k) * float("nan"))}))
    _error(capsys, ["finetune", *run], "the loss became nan at epoch 0, step 0")
    cfg = ft.FinetuneConfig(checkpoint=str(ckpt), data=str(data), epochs=1, batch_size=4, loader="torch",
                            num_workers=0, device="cpu", output_dir=str(tmp_path / "lib"), progress=False)
    with pytest.raises(TrainingError, match="the loss became nan"):  # a run error, not a bad flag
        ft.finetune(cfg)
