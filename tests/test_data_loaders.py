"""pretrain_loader / classification_loader on both backends: shapes, dtypes, values, labels,
determinism, sharding, exact resume, eval sizes, argument errors."""
import numpy as np
import pytest
import torch

import fastmae.data.loader as loader_mod
from fastmae.data import IMAGENET_MEAN, IMAGENET_STD, classification_loader, dali_available, pretrain_loader, scan
from fastmae.settings import BackendUnavailable, ConfigError, DataError
from tests.test_data_common import make_folder

@pytest.fixture(autouse=True)
def _own_cache(tmp_cache):
    """Loaders cache header verdicts in $FASTMAE_CACHE: keep each test's to itself."""
    return tmp_cache


needs_dali = pytest.mark.skipif(not dali_available(), reason="NVIDIA DALI is not installed")
BACKENDS = ["torch", pytest.param("dali", marks=needs_dali)]


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(np.random.randint(2**31))
    make_folder(str(tmp_path / "data"), rng, classes=("cat", "dog", "eel"), per_class=5, size=(40, 30))
    return tmp_path / "data"


def _cpu(**kw):
    return dict(device="cpu", num_workers=0, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pretrain_batches_shape_dtype_range(folder, backend):
    loader = pretrain_loader(folder, img_size=16, batch_size=4, backend=backend, **_cpu(seed=1))
    assert loader.backend == backend and len(loader) == 15 // 4 and loader.skipped == []
    batches = list(loader)
    assert len(batches) == 3
    lo = min((0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    hi = max((1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    for x in batches:
        assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32 and x.device.type == "cpu"
        assert torch.isfinite(x).all()
        assert x.min() >= lo - 0.05 and x.max() <= hi + 0.05  # cubic overshoot is clamped to 0..255
        assert x.std() > 0.1  # not a constant image


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_same_batches_other_seed_or_epoch_differs(folder, backend):
    def epoch(seed, e):
        loader = pretrain_loader(folder, img_size=16, batch_size=5, backend=backend, **_cpu(seed=seed))
        return torch.cat(list(loader.iter_from(e)))

    a = epoch(7, 0)
    torch.testing.assert_close(a, epoch(7, 0), rtol=0, atol=0)
    assert not torch.equal(a, epoch(8, 0))
    assert not torch.equal(a, epoch(7, 1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_classification_eval_sizes_labels_and_last_batch(folder, backend):
    loader = classification_loader(folder, train=False, img_size=24, batch_size=4, backend=backend, **_cpu())
    assert loader.classes == ["cat", "dog", "eel"] and loader.num_classes == 3
    assert len(loader) == 4  # 15 images, last partial batch kept in eval
    out = list(loader)
    assert [len(y) for _, y in out] == [4, 4, 4, 3]
    for x, y in out:
        assert x.shape[1:] == (3, 24, 24) and y.dtype == torch.int64
    assert torch.cat([y for _, y in out]).tolist() == scan(folder).labels  # eval keeps file order


def test_eval_transform_is_resize_then_centre_crop(tmp_path):
    from PIL import Image
    from torchvision.transforms import functional as TF

    rng = np.random.default_rng(np.random.randint(2**31))
    arr = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)
    (tmp_path / "c").mkdir()
    Image.fromarray(arr).save(tmp_path / "c" / "x.png")
    x, _ = next(iter(classification_loader(tmp_path, train=False, img_size=28, batch_size=1, backend="torch", **_cpu())))
    ref = TF.center_crop(TF.resize(Image.fromarray(arr), 32, TF.InterpolationMode.BICUBIC), [28, 28])  # 28/0.875 = 32
    ref = TF.normalize(TF.to_tensor(ref), IMAGENET_MEAN, IMAGENET_STD)
    torch.testing.assert_close(x[0], ref, rtol=1e-6, atol=1e-6)


@needs_dali
def test_dali_eval_matches_torch_eval(folder):
    kw = dict(train=False, img_size=24, batch_size=8, **_cpu())
    (xd, yd), (xt, yt) = (next(iter(classification_loader(folder, backend=b, **kw))) for b in ("dali", "torch"))
    assert torch.equal(yd, yt)
    assert (xd - xt).abs().mean() < 0.03  # two cubic resamplers, 8-bit rounding: close, not equal


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_equals_tail_of_full_epoch(folder, backend):
    loader = classification_loader(folder, train=True, img_size=16, batch_size=3, backend=backend, **_cpu(seed=5))
    full = list(loader.iter_from(4))
    tail = list(loader.iter_from(4, start_batch=2))
    assert len(full) == 5 and len(tail) == 3
    for (a, ya), (b, yb) in zip(full[2:], tail):
        assert torch.equal(a, b) and torch.equal(ya, yb)
    loader.set_epoch(4)
    assert torch.equal(next(iter(loader))[0], full[0][0])
    with pytest.raises(DataError, match="start_batch"):
        loader.iter_from(0, start_batch=6)


def test_torch_workers_give_the_same_batches(folder):
    kw = dict(img_size=16, batch_size=4, backend="torch", device="cpu", seed=3)
    a = list(pretrain_loader(folder, num_workers=0, **kw))
    loader = pretrain_loader(folder, num_workers=2, **kw)
    assert loader._dl.dataset[(0, 0)][0].dtype == torch.float32  # on the CPU, the workers normalise
    b = list(loader)
    assert all(torch.equal(p, q) for p, q in zip(a, b)) and len(a) == len(b) == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_ranks_read_disjoint_shards(folder, backend):
    seen = []
    for rank in range(3):
        loader = classification_loader(folder, train=False, img_size=8, batch_size=5, backend=backend,
                                       rank=rank, world_size=3, **_cpu())
        assert len(loader) == 1
        seen.append([p for b in loader.plan(0) for p in b])
    flat = sorted(i for s in seen for i in s)
    assert flat == list(range(15))


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_channel_and_half_precision(folder, backend):
    loader = pretrain_loader(folder, img_size=8, batch_size=2, backend=backend, in_chans=1,
                             dtype=torch.float16, **_cpu())
    x = next(iter(loader))
    assert x.shape == (2, 1, 8, 8) and x.dtype == torch.float16
    x = next(iter(pretrain_loader(folder, img_size=8, batch_size=2, backend=backend, dtype=torch.bfloat16, **_cpu())))
    assert x.dtype == torch.bfloat16 and torch.isfinite(x.float()).all()


def test_argument_errors(folder, monkeypatch):
    with pytest.raises(DataError, match="batch size 16 is larger than the 15"):
        pretrain_loader(folder, batch_size=16, backend="torch", **_cpu())
    assert len(pretrain_loader(folder, batch_size=16, backend="torch", drop_last=False, **_cpu())) == 1
    with pytest.raises(DataError, match="does not exist"):
        pretrain_loader(folder / "missing", backend="torch", **_cpu())
    with pytest.raises(ConfigError, match="unknown data loader"):
        pretrain_loader(folder, backend="ffcv", **_cpu())
    with pytest.raises(ConfigError, match="in_chans"):
        pretrain_loader(folder, backend="torch", in_chans=4, **_cpu())
    with pytest.raises(ConfigError, match="img_size"):
        pretrain_loader(folder, backend="torch", img_size=0, **_cpu())
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU is visible"):
            pretrain_loader(folder, backend="torch", device="cuda", num_workers=0)
    (folder.parent / "flat").mkdir()
    (folder / "cat" / "00.png").rename(folder.parent / "flat" / "00.png")
    with pytest.raises(DataError, match="has no labels"):
        classification_loader(folder.parent / "flat", train=True, batch_size=1, backend="torch", **_cpu())
    monkeypatch.setattr(loader_mod, "dali_available", lambda: False)
    with pytest.raises(BackendUnavailable, match="DALI"):
        pretrain_loader(folder, backend="dali", **_cpu())
    assert pretrain_loader(folder, batch_size=2, backend="auto", **_cpu()).backend == "torch"


@needs_dali
def test_auto_picks_dali_when_installed(folder):
    assert pretrain_loader(folder, batch_size=2, backend="auto", **_cpu()).backend == "dali"


@pytest.mark.gpu
@needs_dali
def test_dali_gpu_mixed_decode(folder):
    loader = pretrain_loader(folder, img_size=16, batch_size=4, backend="dali", device="cuda", dtype=torch.bfloat16)
    x = next(iter(loader))
    assert x.device.type == "cuda" and x.dtype == torch.bfloat16 and x.shape == (4, 3, 16, 16)
    xe, y = next(iter(classification_loader(folder, train=False, img_size=16, batch_size=4, backend="dali")))
    xc, yc = next(iter(classification_loader(folder, train=False, img_size=16, batch_size=4, backend="dali",
                                             device="cpu")))
    assert torch.equal(y.cpu(), yc) and (xe.cpu() - xc).abs().mean() < 0.03


@pytest.mark.parametrize("backend", BACKENDS)
def test_close_stops_the_workers_and_drops_their_queued_batches(folder, backend):
    with pretrain_loader(folder, img_size=16, batch_size=2, backend=backend, device="cpu", num_workers=2,
                         seed=3) as loader:
        it = loader.iter_from(0)
        first = next(it)
        it.close()
        if backend == "torch":
            workers = loader._dl._iterator._workers  # persistent: alive, with batches queued
            assert all(w.is_alive() for w in workers)
        else:
            assert loader._pool is not None  # the reduced-decode threads
    if backend == "torch":
        assert loader._dl._iterator is None and not any(w.is_alive() for w in workers)
    else:
        assert loader._pool is None
    assert first.shape == (2, 3, 16, 16)
