"""Test setup: the Triton kernels run in the interpreter on CPU tensors, so this must be
set before triton is first imported anywhere."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import random  # noqa: E402
import zlib  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds; run with -m slow")


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU; none is visible (torch.cuda.is_available() is False)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    # Loaders cache file checks and the built-in dataset under FASTMAE_CACHE: keep the
    # test run's out of the user's ~/.cache.
    old = os.environ.get("FASTMAE_CACHE")
    os.environ["FASTMAE_CACHE"] = str(tmp_path_factory.mktemp("fastmae-cache"))
    yield
    if old is None:
        os.environ.pop("FASTMAE_CACHE", None)
    else:
        os.environ["FASTMAE_CACHE"] = old


@pytest.fixture(autouse=True)
def _seed(request):
    # A per-test seed from the test's name: fresh inputs per test, reproducible runs.
    seed = zlib.crc32(request.node.nodeid.encode())
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    yield


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """FASTMAE_CACHE pointed at a fresh folder."""
    monkeypatch.setenv("FASTMAE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"
