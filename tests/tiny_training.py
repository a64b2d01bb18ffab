"""Config overrides for seconds-long CPU training runs in tests, the export settings of their int8 bundles, and a
check on their exported networks."""

from __future__ import annotations

import torch

from training.arch_spec import ArchSpec
from training.config import load_config
from training.distributed import init_distributed
from training.models.network import ReIDNet
from training.pruning import slice_state_dict
from training.trainer import Trainer

TINY_INT8_EXPORT = ["--set", "batch.max=16", "--set", "int8.timing_seconds=0.2", "--set", "gates.int8.max_map_drop=2.0"]
"""`cdd-export --precision int8` settings for a tiny run: short format timing, and an mAP tolerance for its 15
queries, where one true match moving a rank changes mAP by more than the 0.5-point default (drops of 0.6-0.8
seen on a 2-core AVX2 machine without VNNI); the gate's mechanism is what the tests check, not that default."""


def tiny_overrides(root, out_dir, kind="teacher", teacher_run="", epochs=2) -> list[str]:
    overrides = [
        f"run.kind={kind!r}".replace("'", '"'), f'run.out_dir="{out_dir}"', f"run.epochs={epochs}",
        "run.eval_every=1", "run.progress=false", 'run.device="cpu"', f'data.root="{root}"', "data.height=64",
        "data.width=32", "data.p=4", "data.k=2", "data.eval_batch_size=32", "model.depth=18", "model.width=0.125",
        "model.embedding_dim=32", "optim.lr=0.05", "optim.warmup_epochs=0.5", "optim.flat_until=1",
        "optim.min_lr=1e-4",
    ]
    if kind == "student":
        overrides += [f'cdd.teacher_run="{teacher_run}"', 'model.init="teacher"', "cdd.grg_start_epoch=0.5",
                      "cdd.memory_size=64", "loss.lasso_lambda=0.05", "cdd.ratio=0.7",
                      "cdd.reset_decay_steps=3", "cdd.shrink_end=0.5"]
    return overrides


def fit_tiny_student(root, out_dir, teacher_run, epochs, extra=(), resume=False, **fit):
    """A tiny `demo-student` run of 3 steps per epoch without evaluation, plus the overrides ``extra``;
    ``resume`` continues from the run dir's checkpoint, ``fit`` goes to `Trainer.fit`. Returns (trainer,
    final metrics). Its budget is one the tiny network can reach (the demo's 20% of the teacher's FLOPs is below
    its smallest exportable network), with a decay that fits in the steps after the shrink end of a 2-epoch run."""
    overrides = tiny_overrides(root, out_dir, "student", teacher_run, epochs=epochs) + [
        "run.max_steps_per_epoch=3", "run.eval_every=0", "cdd.flops_budget=0.6", "cdd.round_to=4",
        "cdd.reset_decay_steps=2", *extra]
    trainer = Trainer(load_config("demo-student", overrides), init_distributed("cpu"), resume=resume)
    return trainer, trainer.fit(**fit)


def assert_slim_equals_full(model_state: dict, spec: ArchSpec) -> None:
    """The slim network rebuilt from ``spec`` computes what the full-width network with ``model_state``
    computes (true when every pruned row is exactly zero; no tolerance beyond float reordering)."""
    full = ReIDNet(ArchSpec(**{**spec.__dict__, "kept_channels": None}))
    full.load_state_dict(model_state)
    slim = ReIDNet(spec)
    slim.load_state_dict(slice_state_dict(model_state, spec))
    x = torch.randn(3, 3, 64, 32)
    assert torch.allclose(full.eval()(x), slim.eval()(x), atol=1e-5)
