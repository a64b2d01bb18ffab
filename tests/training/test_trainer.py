"""End-to-end training on a tiny synthetic set: teacher, CDD student, exact resume, bad teacher dirs."""

import json

import pytest
import torch

from training.arch_spec import ArchSpec
from training.checkpoint import load_checkpoint
from training.config import load_config
from training.distributed import init_distributed
from training.models.teacher import TeacherError
from training.trainer import Trainer


def _fit(overrides, **kwargs):
    cfg = load_config("demo-teacher", overrides)
    trainer = Trainer(cfg, init_distributed("cpu"), resume=kwargs.pop("resume", False))
    return trainer, trainer.fit(**kwargs)


def test_teacher_run_dir_is_complete(teacher_run):
    metrics = json.loads((teacher_run / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert {"id", "triplet", "total"} <= set(metrics["epochs"][0]["loss"])
    assert 0 <= metrics["final"]["mAP"] <= 100 and metrics["final"]["flops_reduction"] == 0
    assert (teacher_run / "curves.png").stat().st_size > 1000
    spec = ArchSpec.load(teacher_run / "arch.json")
    assert not spec.indicators and spec.num_classes == 8
    state = load_checkpoint(teacher_run / "checkpoint.pt", kind="teacher")
    assert state["epoch"] == 2 and "optimizer" in state
    assert json.loads((teacher_run / "config.json").read_text())["model"]["depth"] == 18


def test_student_prunes_with_gradient_resetting(tiny_reid_root, teacher_run, tmp_path, overrides_for):
    out = tmp_path / "student"
    trainer, final = _fit(overrides_for(tiny_reid_root, out, "student", teacher_run, epochs=2))
    masks = trainer.resetter.masks
    assert sum(int(m.sum()) for m in masks) > 0, "gradient resetting never reset a channel"
    spec = ArchSpec.load(out / "arch.json")
    assert spec.indicators and spec.kept_channels is not None
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"kd", "feature", "lasso"} <= set(metrics["epochs"][0]["loss"])
    assert metrics["epochs"][-1]["pruning"]["reset_channels"] == sum(int(m.sum()) for m in masks)
    assert final["teacher_flops"] >= final["flops"]
    # one more step: the gradient a reset row receives is exactly lasso_lambda * W / ||W|| (no task part)
    images, labels, _, _ = next(iter(trainer.loader))
    weights = [m.weight for m in trainer.net.indicators()]
    before = [w.detach().clone() for w in weights]
    trainer.optimizer.param_groups[-1]["lr"] = 0.0  # keep weights fixed so .grad can be inspected
    trainer.train_step(images, labels, grg_active=True)
    for w, w0, mask in zip(weights, before, trainer.resetter.masks, strict=False):
        rows = w0.flatten(1)[mask]
        expected = 0.05 * rows / rows.norm(dim=1, keepdim=True)
        assert torch.allclose(w.grad.flatten(1)[mask], expected, atol=1e-6)


def test_resume_after_kill_is_exact(tiny_reid_root, teacher_run, tmp_path, overrides_for):
    fast = ["run.max_steps_per_epoch=3", "run.eval_every=0"]
    straight = tmp_path / "straight"
    _fit(overrides_for(tiny_reid_root, straight, "student", teacher_run, epochs=2) + fast)
    resumed = tmp_path / "resumed"
    overrides = overrides_for(tiny_reid_root, resumed, "student", teacher_run, epochs=2) + fast
    _fit(overrides, stop_after_epochs=1)  # "killed" after the epoch-1 checkpoint
    assert load_checkpoint(resumed / "checkpoint.pt")["epoch"] == 1
    _fit(overrides, resume=True)
    a = load_checkpoint(straight / "checkpoint.pt")
    b = load_checkpoint(resumed / "checkpoint.pt")
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert all(torch.equal(x, y) for x, y in zip(a["grg"]["masks"], b["grg"]["masks"], strict=False))


def test_teacher_with_wrong_identity_count_is_rejected(tiny_reid_root, teacher_run, tmp_path, overrides_for):
    spec = ArchSpec.load(teacher_run / "arch.json")
    bad = tmp_path / "bad-teacher"
    bad.mkdir()
    ArchSpec(**{**spec.__dict__, "num_classes": 99}).save(bad / "arch.json")
    (bad / "checkpoint.pt").write_bytes((teacher_run / "checkpoint.pt").read_bytes())
    with pytest.raises(TeacherError, match="99 identity classes, the training data has 8"):
        _fit(overrides_for(tiny_reid_root, tmp_path / "s", "student", bad))
    with pytest.raises(TeacherError, match="train the teacher first"):
        _fit(overrides_for(tiny_reid_root, tmp_path / "s", "student", tmp_path / "missing"))


def test_static_student_trains_the_cdd_architecture_from_scratch(tiny_reid_root, teacher_run, student_run,
                                                                   tmp_path, overrides_for):
    out = tmp_path / "static"
    overrides = overrides_for(tiny_reid_root, out, "student", teacher_run, epochs=1)
    overrides += [f'cdd.static_arch="{student_run / "arch.json"}"', 'model.init="scratch"',
                  "run.max_steps_per_epoch=2", "run.eval_every=0"]
    trainer, final = _fit(overrides)
    cdd_spec = ArchSpec.load(student_run / "arch.json")
    static_spec = ArchSpec.load(out / "arch.json")
    assert not static_spec.indicators and trainer.resetter is None
    assert static_spec.kept_counts() == cdd_spec.kept_counts()
    assert final["flops"] == json.loads((student_run / "metrics.json").read_text())["final"]["flops"]
    assert "feature" in json.loads((out / "metrics.json").read_text())["epochs"][0]["loss"]
