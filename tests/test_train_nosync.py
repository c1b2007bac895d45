"""The training step reads nothing back to the host: over 20 real pretraining steps on the
CPU, aten._local_scalar_dense (what .item(), float(), .tolist() and bool() of a tensor run)
is counted per step and must be zero on every step that neither logs nor saves."""
import collections
import os
import traceback

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import fastmae.train.loop as loop
from fastmae.ops import dispatch
from fastmae.train import TrainConfig, pretrain
from tests.train_fixtures import make_image_folder

SCALAR_READS = {torch.ops.aten._local_scalar_dense.default}


class ScalarReads(TorchDispatchMode):
    """Counts host reads of tensor values, by the training step they happen in."""

    def __init__(self):
        super().__init__()
        self.step = 0  # 0: before the first step
        self.counts = collections.Counter()
        self.loader_counts = collections.Counter()

    def count(self) -> None:
        # As an epoch starts, the loader draws its sample order (fastmae.data) and its
        # workers' base seed (torch's DataLoader) from CPU generators: host-only reads,
        # never a device sync. Kept apart.
        loader = any(f"torch{os.sep}utils{os.sep}data" in frame.filename
                     or f"fastmae{os.sep}data" in frame.filename for frame in traceback.extract_stack())
        (self.loader_counts if loader else self.counts)[self.step] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in SCALAR_READS:
            self.count()
        return func(*args, **(kwargs or {}))


class ListReads(TorchFunctionMode):
    """.tolist() and .numpy() of a CPU tensor read its memory without dispatching an op (on
    CUDA they copy to the host first, which syncs): seen here, at the Python level."""

    def __init__(self, reads: ScalarReads):
        super().__init__()
        self.reads = reads

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (torch.Tensor.tolist, torch.Tensor.numpy):
            self.reads.count()
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data"), n=32)


def test_no_host_reads_on_steps_that_neither_log_nor_save(images, tmp_path, monkeypatch):
    reads = ScalarReads()
    real_set_lr = loop.set_lr

    def mark_step(optimizer, value):  # called once at the start of every optimizer step
        reads.step += 1
        real_set_lr(optimizer, value)

    monkeypatch.setattr(loop, "set_lr", mark_step)
    # The ops check index ranges by reading values on CPU tensors only (on CUDA that read
    # would sync the device, so they skip it there): run them under the CUDA policy.
    monkeypatch.setattr(dispatch, "reads_values", lambda t: False)
    # 32 images, batch 4: 8 steps an epoch; a log every 5 steps, a checkpoint every 7 and at
    # the end. Epoch ends (steps 8 and 16) save nothing (--save-every 100). One loader
    # worker: the augmentation's random draws happen in its own process, as they would on
    # a GPU run.
    cfg = TrainConfig(data=str(images), model="mae_vit_micro_patch4", img_size=32, batch_size=4,
                      epochs=3, max_steps=20, warmup_epochs=1, loader="torch", num_workers=1,
                      kernels="torch", log_every=5, save_every=100, save_every_steps=7,
                      output_dir=str(tmp_path / "run"), model_overrides={"depth": 1, "decoder_depth": 1})
    with reads, ListReads(reads):
        result = pretrain(cfg, log=lambda msg: None)
    assert result.steps == 20 and reads.step == 20
    logged, saved = {5, 10, 15, 20}, {7, 14, 20}
    quiet = [s for s in range(1, 21) if s not in logged | saved]
    assert {s: reads.counts[s] for s in quiet} == {s: 0 for s in quiet}
    # The counter sees the reads that do happen: each logging step reads the step's flags.
    assert all(reads.counts[s] > 0 for s in logged), dict(reads.counts)
    # The loader's draws happen only as each of the 3 epochs starts (before step 1, after 8, 16).
    assert set(reads.loader_counts) == {0, 8, 16}, dict(reads.loader_counts)


def test_a_skipped_step_runs_the_same_ops_as_a_good_one(monkeypatch):
    """Capture-safe: the step has no branch on the data. A non-finite loss runs exactly the
    same sequence of aten ops as a finite one (the skip is a flag in the fused AdamW)."""
    monkeypatch.setattr(dispatch, "reads_values", lambda t: False)  # the CUDA policy, as above
    from fastmae.models import create_model
    from fastmae.settings import build_optimizer
    from fastmae.train import distributed, step as train_step

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.append(func)
            return func(*args, **(kwargs or {}))

    def one_step(poison: bool):
        torch.manual_seed(0)
        model = create_model("mae_vit_micro_patch4", img_size=16, kernels="torch",
                             depth=1, decoder_depth=1)
        opt = build_optimizer(model, 1e-3, 0.05, torch.device("cpu"))
        state = train_step.StepState.new(torch.device("cpu"))
        imgs = torch.randn(2, 3, 16, 16)
        if poison:
            imgs[0, 0, 0, 0] = float("nan")
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        ops = Ops()
        with ops:
            loss, _, _ = model(imgs, 0.75, torch.rand(2, model.num_patches))
            window_loss = train_step.backward(loss, 1, None)
            train_step.optimizer_step(model, opt, None, 1.0, window_loss, state, distributed.DistInfo())
        changed = any(not torch.equal(before[n], p) for n, p in model.named_parameters())
        return ops.seen, state.read(), changed

    good_ops, (good_skipped, good_bad, good_loss), good_changed = one_step(False)
    bad_ops, (bad_skipped, bad_bad, bad_loss), bad_changed = one_step(True)
    assert good_ops == bad_ops and len(good_ops) > 100
    assert torch.ops.aten._local_scalar_dense.default not in good_ops
    assert (good_skipped, good_bad, good_changed) == (False, 0, True) and good_loss == good_loss
    assert (bad_skipped, bad_bad, bad_changed) == (True, 1, False) and bad_loss != bad_loss  # nan: none yet
