"""End-to-end training on a tiny synthetic set: teacher, CDD student, exact resume, bad teacher dirs."""

import json

import pytest
import torch

from tiny_training import assert_slim_equals_full, tiny_overrides
from training.arch_spec import ArchSpec
from training.checkpoint import load_checkpoint
from training.config import load_config
from training.cost import deployed_cost
from training.data.dataset import ImageDataset
from training.data.layouts import load_dataset
from training.data.transforms import build_eval_transform
from training.distributed import init_distributed
from training.evaluate import evaluate_model
from training.models.teacher import TeacherError, load_teacher
from training.pruning import block_prefixes
from training.trainer import Trainer


def _fit(overrides, **kwargs):
    cfg = load_config("demo-teacher", overrides)
    trainer = Trainer(cfg, init_distributed("cpu"), resume=kwargs.pop("resume", False))
    return trainer, trainer.fit(**kwargs)


def test_teacher_run_dir_is_complete(teacher_run):
    metrics = json.loads((teacher_run / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert {"id", "triplet", "total"} <= set(metrics["epochs"][0]["loss"])
    assert metrics["final"]["flops_reduction"] == 0 and "compression" not in metrics["final"]
    assert (teacher_run / "curves.png").stat().st_size > 1000
    spec = ArchSpec.load(teacher_run / "arch.json")
    assert not spec.indicators and spec.num_classes == 8
    state = load_checkpoint(teacher_run / "checkpoint.pt", kind="teacher")
    assert state["epoch"] == 2 and "optimizer" in state
    assert json.loads((teacher_run / "config.json").read_text())["model"]["depth"] == 18


def test_reported_map_is_the_saved_teachers_map(tiny_reid_root, teacher_run):
    cfg = load_config("demo-teacher", [f'data.root="{tiny_reid_root}"', "data.height=64", "data.width=32"])
    teacher = load_teacher(teacher_run, 8)
    splits = load_dataset("market1501", str(tiny_reid_root))
    tf = build_eval_transform((64, 32), cfg.data.mean, cfg.data.std)
    query = ImageDataset(splits.query, [r.pid for r in splits.query], tf)
    gallery = ImageDataset(splits.gallery, [r.pid for r in splits.gallery], tf)
    measured = evaluate_model(teacher, query, gallery, "cpu", splits.protocol).as_percent()
    final = json.loads((teacher_run / "metrics.json").read_text())["final"]
    assert round(measured["mAP"], 3) == final["mAP"] and round(measured["rank1"], 3) == final["rank1"]


@pytest.fixture(scope="module")
def tiny_student(tiny_reid_root, teacher_run, tmp_path_factory):
    """A 2-epoch tiny CDD student (decay rule) kept in memory: (trainer, final metrics, run dir)."""
    out = tmp_path_factory.mktemp("cdd") / "student"
    trainer, final = _fit(tiny_overrides(tiny_reid_root, out, "student", teacher_run, epochs=2))
    return trainer, final, out


def test_reset_rows_are_exactly_zero_and_the_exported_arch_prunes_exactly_them(tiny_student):
    trainer, final, out = tiny_student
    masks = [m.cpu() for m in trainer.resetter.masks]
    assert sum(int(m.sum()) for m in masks) > 0, "gradient resetting never reset a channel"
    state = load_checkpoint(out / "checkpoint.pt", kind="student")
    spec = ArchSpec.load(out / "arch.json")
    assert spec.indicators and spec.kept_channels is not None
    for prefix, mask, kept, (_, p) in zip(block_prefixes(spec), masks, spec.kept_channels, spec.blocks(),
                                          strict=True):
        rows = state["model"][prefix + "indicator.weight"].flatten(1)
        assert torch.count_nonzero(rows[mask]) == 0, f"{prefix}: a reset row is not exactly zero"
        survivors = [i for i in range(p) if not mask[i] and float(rows[i].norm()) >= 1e-5]
        assert list(kept) == (survivors or [int(rows.norm(dim=1).argmax())]), prefix
    assert final["flops"] == deployed_cost(spec).flops < final["teacher_flops"]
    assert final["compression"]["reset_rule"] == "decay"
    assert final["compression"]["reset_channels"] == sum(int(m.sum()) for m in masks)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"][-1]["pruning"]["reset_channels"] == sum(int(m.sum()) for m in masks)
    # slim == full width, because the pruned rows are exactly zero (no tolerance beyond float reordering)
    assert_slim_equals_full(state["model"], spec)


def test_lasso_is_in_the_loss_before_resetting_and_applied_once_during_it(tiny_student):
    trainer, _, _ = tiny_student
    images, labels, _, _ = next(iter(trainer.loader))
    weights = [m.weight for m in trainer.net.indicators()]
    for group in trainer.optimizer.param_groups:
        group["lr"] = 0.0  # keep the weights fixed so both gradients are taken at the same point
    before = trainer.train_step(images, labels, grg_active=False)
    grad_before = [w.grad.detach().clone() for w in weights]
    during = trainer.train_step(images, labels, grg_active=True)
    assert before["lasso"] > 0 and "lasso" not in during
    assert during["total"] < before["total"]  # the lasso left the objective
    for w, g0, mask in zip(weights, grad_before, trainer.resetter.masks, strict=True):
        keep = ~mask
        # by hand (during) == through the loss (before) for rows that are not reset: no double count
        assert torch.allclose(w.grad[keep], g0[keep], atol=1e-6)
        assert torch.count_nonzero(w.grad[mask]) == 0


def test_teacher_stays_frozen_in_eval_mode(tiny_student, teacher_run):
    trainer, _, _ = tiny_student
    assert not trainer.teacher.training
    saved = load_checkpoint(teacher_run / "checkpoint.pt", kind="teacher")["model"]
    for key, value in trainer.teacher.state_dict().items():
        assert torch.equal(value.cpu(), saved[key]), f"teacher tensor {key} changed during student training"
    assert any(k.endswith("running_mean") for k in saved)

def test_resume_after_kill_is_exact(tiny_reid_root, teacher_run, tmp_path, overrides_for):
    # decay over 1 step so the reset set is still growing at the epoch-1 checkpoint: its memory must be there
    fast = ["run.max_steps_per_epoch=3", "run.eval_every=0", "cdd.reset_decay_steps=1", "cdd.ratio=0.9"]
    straight = tmp_path / "straight"
    _fit(overrides_for(tiny_reid_root, straight, "student", teacher_run, epochs=2) + fast)
    resumed = tmp_path / "resumed"
    overrides = overrides_for(tiny_reid_root, resumed, "student", teacher_run, epochs=2) + fast
    _fit(overrides, stop_after_epochs=1)  # "killed" after the epoch-1 checkpoint
    mid = load_checkpoint(resumed / "checkpoint.pt")
    assert mid["epoch"] == 1 and mid["grg"]["growing"] and mid["grg"]["memories"][0]["count"] > 0
    _fit(overrides, resume=True)
    a = load_checkpoint(straight / "checkpoint.pt")
    b = load_checkpoint(resumed / "checkpoint.pt")
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert all(torch.equal(x, y) for x, y in zip(a["grg"]["masks"], b["grg"]["masks"], strict=True))
    assert b["grg"]["memories"] is None  # the finished run's checkpoint does not carry the memory bank


def test_teacher_of_another_input_size_or_architecture_is_refused(tiny_reid_root, teacher_run, tmp_path,
                                                                   overrides_for):
    spec = ArchSpec.load(teacher_run / "arch.json")
    for field, value, message in [("input_size", (128, 64), r"input_size is \(128, 64\).*gives \(64, 32\)"),
                                  ("depth", 34, "depth is 34.*gives 18")]:
        bad = tmp_path / f"bad-{field}"
        bad.mkdir()
        ArchSpec(**{**spec.__dict__, field: value}).save(bad / "arch.json")
        (bad / "checkpoint.pt").write_bytes((teacher_run / "checkpoint.pt").read_bytes())
        with pytest.raises(TeacherError, match=message):
            _fit(overrides_for(tiny_reid_root, tmp_path / "s", "student", bad))


def test_flops_budget_holds_for_the_exported_network_with_rounding(tiny_reid_root, teacher_run, tmp_path,
                                                                    overrides_for):
    out = tmp_path / "budget"
    overrides = overrides_for(tiny_reid_root, out, "student", teacher_run, epochs=2)
    trainer, final = _fit(overrides + ["cdd.flops_budget=0.6", "cdd.round_to=4", "cdd.ratio=0.95",
                                       "run.eval_every=0"])
    spec = ArchSpec.load(out / "arch.json")
    assert all(k % 4 == 0 or k == p for k, (_, p) in zip(spec.kept_counts(), spec.blocks(), strict=True))
    assert final["flops"] == deployed_cost(spec).flops <= 0.6 * final["teacher_flops"]
    report = final["compression"]
    assert report["met"] and report["within_one_rounding_step"] and "FLOPs budget met" in report["growth"]
    assert not trainer.resetter.growing


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
    assert static_spec.kept_counts() == cdd_spec.kept_counts() != [p for _, p in cdd_spec.blocks()]
    assert final["flops"] == json.loads((student_run / "metrics.json").read_text())["final"]["flops"]
    assert "feature" in json.loads((out / "metrics.json").read_text())["epochs"][0]["loss"]


def test_prune_then_distill_starts_from_the_teachers_sliced_weights(tiny_reid_root, teacher_run, student_run,
                                                                     tmp_path, overrides_for):
    overrides = overrides_for(tiny_reid_root, tmp_path / "e", "student", teacher_run, epochs=1)
    overrides += [f'cdd.static_arch="{student_run / "arch.json"}"', 'model.init="teacher"']
    trainer = Trainer(load_config("demo-teacher", overrides), init_distributed("cpu"))
    spec = ArchSpec.load(student_run / "arch.json")
    teacher = trainer.teacher.state_dict()
    student = trainer.net.state_dict()
    for prefix, kept in zip(block_prefixes(spec), spec.kept_channels, strict=True):
        index = torch.tensor(kept)
        assert torch.equal(student[prefix + "conv1.weight"], teacher[prefix + "conv1.weight"][index])
        assert torch.equal(student[prefix + "bn1.running_var"], teacher[prefix + "bn1.running_var"][index])
        assert torch.equal(student[prefix + "conv2.weight"], teacher[prefix + "conv2.weight"][:, index])
    assert torch.equal(student["head.embed.weight"], teacher["head.embed.weight"])
