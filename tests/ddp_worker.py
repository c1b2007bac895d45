"""Run by tests/test_train_distributed.py, once under torchrun and once alone: one
pretraining step, saving each rank's gradients just before the optimizer step."""
import sys

import torch

import fastmae.train.step as train_step
from fastmae.train import TrainConfig, pretrain

data, out, batch_size, grads_file = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
original = train_step.optimizer_step


def dump_then_step(model, optimizer, *args):
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    torch.save(grads, f"{grads_file}.rank{rank}")
    original(model, optimizer, *args)


train_step.optimizer_step = dump_then_step
pretrain(TrainConfig(data=data, output_dir=out, batch_size=batch_size, max_steps=1, num_workers=0,
                     loader="torch", model="mae_vit_micro_patch4", img_size=32, epochs=1,
                     warmup_epochs=0, model_overrides={"depth": 2, "decoder_depth": 1}))
