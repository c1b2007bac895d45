"""Data-loader benchmarks (small): `pytest benchmarks/test_bench_data.py --benchmark-only`.
One epoch of 32 generated JPEGs at 64 px through each backend; the full comparison on real
photographs is benchmarks/bench_data.py."""
import numpy as np
import pytest
from PIL import Image

from fastmae.data import dali_available, pretrain_loader

N_IMAGES = 32


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_data")
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        low = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        (root / f"c{i % 2}").mkdir(exist_ok=True)
        Image.fromarray(low).resize((160, 120), Image.BILINEAR).save(root / f"c{i % 2}" / f"{i}.jpg", quality=90)
    return root


@pytest.mark.parametrize("backend", ["torch", pytest.param("dali", marks=pytest.mark.skipif(
    not dali_available(), reason="NVIDIA DALI is not installed"))])
def test_bench_pretrain_epoch(benchmark, folder, backend, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTMAE_CACHE", str(tmp_path / "cache"))
    loader = pretrain_loader(folder, img_size=64, batch_size=8, backend=backend, device="cpu", num_workers=2)

    def epoch():
        return sum(len(x) for x in loader.iter_from(0))

    n = benchmark.pedantic(epoch, rounds=3, warmup_rounds=1)
    assert n == N_IMAGES
    benchmark.extra_info["images_per_round"] = n
