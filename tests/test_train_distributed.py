"""Two CPU processes under torchrun (gloo) against one process on the same global batch:
the loader shards, the masking noise and DDP's gradient averaging must add up to the
same gradients."""
import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.train_fixtures import make_image_folder

WORKER = Path(__file__).with_name("ddp_worker.py")


def _env():
    root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "TRITON_INTERPRET": "0", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_two_process_gloo_gradients_match_single_process(tmp_path):
    data = make_image_folder(tmp_path / "data", n=16)
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
              "--standalone", str(WORKER)]
    two = subprocess.run([*launch, str(data), str(tmp_path / "two"), "4", str(tmp_path / "g2")],
                         capture_output=True, text=True, env=_env(), timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, str(WORKER), str(data), str(tmp_path / "one"), "8",
                          str(tmp_path / "g1")], capture_output=True, text=True, env=_env(), timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    single = torch.load(tmp_path / "g1.rank0", weights_only=True)
    rank0 = torch.load(tmp_path / "g2.rank0", weights_only=True)
    rank1 = torch.load(tmp_path / "g2.rank1", weights_only=True)
    assert single.keys() == rank0.keys() and len(single) > 20
    for name, g in single.items():
        assert torch.equal(rank0[name], rank1[name]), name  # DDP averaged: identical on both ranks
        torch.testing.assert_close(rank0[name], g, rtol=1e-4, atol=1e-7, msg=lambda m: f"{name}: {m}")
    # only rank 0 writes
    assert (tmp_path / "two" / "checkpoint-last.pth").exists()
    assert len(list((tmp_path / "two").glob("checkpoint-*.pth"))) == 2
