"""Launched by torchrun in test_distributed.py: one CDD student run per rank, then a digest per rank.

Rank r>0 gets its own (never used) out_dir so the test can prove that only rank 0 writes run files.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from tiny_training import tiny_overrides
from training.config import load_config
from training.distributed import init_distributed
from training.trainer import Trainer


def main(root: str, teacher: str, out: str, digest_dir: str) -> None:
    ctx = init_distributed("cpu")
    out_dir = out if ctx.rank == 0 else f"{out}-rank{ctx.rank}"
    overrides = tiny_overrides(root, out_dir, "student", teacher, epochs=2)
    overrides += ["run.max_steps_per_epoch=3", "run.eval_every=0"]
    trainer = Trainer(load_config("demo-teacher", overrides), ctx)
    trainer.fit()
    params = {k: v.detach().clone() for k, v in trainer.net.named_parameters()}
    torch.save({"params": params, "masks": [m.cpu() for m in trainer.resetter.masks],
                "memory": [m.contents().cpu() for m in trainer.resetter.memories]},
               Path(digest_dir) / f"rank{ctx.rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:5])
