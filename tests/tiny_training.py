"""Config overrides for seconds-long CPU training runs in tests."""

from __future__ import annotations


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
                      "cdd.reset_decay_steps=3"]
    return overrides
