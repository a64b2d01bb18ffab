"""Launched by torchrun in test_distributed.py.

``train ROOT TEACHER OUT DIGESTS``: one CDD student run per rank, then a digest per rank. Rank r>0 gets its
own (never used) out_dir so the test can prove that only rank 0 writes run files.
``resetter DIGESTS``: one GradientResetter.update with rank-specific descriptors, then a digest per rank.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from tiny_training import tiny_overrides
from training.config import load_config
from training.distributed import init_distributed
from training.grg import GradientResetter
from training.trainer import Trainer


def main(root: str, teacher: str, out: str, digest_dir: str) -> None:
    ctx = init_distributed("cpu")
    out_dir = out if ctx.rank == 0 else f"{out}-rank{ctx.rank}"
    overrides = tiny_overrides(root, out_dir, "student", teacher, epochs=2)
    overrides += ["run.max_steps_per_epoch=3", "run.eval_every=0"]
    trainer = Trainer(load_config("demo-teacher", overrides), ctx)
    trainer.fit()
    params = {k: v.detach().clone() for k, v in trainer.net.named_parameters()}
    torch.save({"params": params, "masks": [m.cpu() for m in trainer.resetter.masks]},
               Path(digest_dir) / f"rank{ctx.rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


# Rank 0 alone would reset channels {2, 3}, rank 1 alone {1, 3}: only channel 3 is unimportant on both.
STUDENT = {0: [1.0, 1.0, 0.1, 0.01], 1: [1.0, 0.1, 1.0, 0.01]}
TEACHER = {0: [1.0, 1.0, 1.0, 1.0], 1: [1.0, 1.0, 1.0, 2.0]}


def resetter(digest_dir: str) -> None:
    ctx = init_distributed("cpu")
    resetter = GradientResetter([4], memory_size=8, topk=1, ratio=0.5)
    resetter.update([torch.tensor([TEACHER[ctx.rank]])], [torch.tensor([STUDENT[ctx.rank]])])
    torch.save({"mask": resetter.masks[0].cpu(), "memory": resetter.memories[0].contents().cpu()},
               Path(digest_dir) / f"rank{ctx.rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    if sys.argv[1] == "resetter":
        resetter(sys.argv[2])
    else:
        main(*sys.argv[2:6])
