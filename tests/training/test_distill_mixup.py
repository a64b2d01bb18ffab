"""Distillation on mixed images: the mixed copy itself, which loss terms see it, the step, and a real
tiny run that resumes exactly."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from tiny_training import assert_slim_equals_full, fit_tiny_student
from training.arch_spec import ArchSpec
from training.checkpoint import load_checkpoint
from training.config import ConfigError, LossConfig, load_config
from training.distill_mixup import DistillMixup
from training.distillation import compute_losses
from training.losses import batch_hard_triplet, cross_entropy_label_smooth
from training.models.network import ReIDNet, TrainOutput
from training.step import build_step


def test_mixed_copy_follows_the_clean_batch_and_is_the_drawn_blend():
    images = torch.randn(6, 3, 8, 4)
    mixer = DistillMixup(1.0, seed=3)
    out = mixer(images, step=5)
    assert out.shape == (12, 3, 8, 4)
    assert torch.equal(out[:6], images)
    lam, perm = mixer.draw(6, 5)
    assert not np.all((lam == 0) | (lam == 1)) and sorted(perm) == list(range(6))
    for i in range(6):
        assert torch.allclose(out[6 + i], float(lam[i]) * images[i] + float(1 - lam[i]) * images[perm[i]], atol=1e-6)


def test_draws_are_fixed_by_seed_rank_and_step():
    a = DistillMixup(1.0, seed=0)
    same = a.draw(16, 7)
    assert all(np.array_equal(x, y) for x, y in zip(same, DistillMixup(1.0, seed=0).draw(16, 7), strict=True))
    for other in (a.draw(16, 8), DistillMixup(1.0, seed=1).draw(16, 7), DistillMixup(1.0, seed=0, rank=1).draw(16, 7)):
        assert not np.array_equal(other[0], same[0])


def test_alpha_shapes_the_mixing_weights():
    near_ends = [np.mean(np.abs(DistillMixup(alpha, seed=0).draw(4000, 0)[0] - 0.5) > 0.4) for alpha in (0.2, 1.0, 8.0)]
    assert near_ends[0] > 0.5 > near_ends[1] > 0.1 > near_ends[2]


def test_alpha_must_be_positive_and_the_config_names_the_field():
    with pytest.raises(ValueError, match="alpha must be > 0, found 0"):
        DistillMixup(0.0, seed=0)
    with pytest.raises(ConfigError, match=r"loss.distill_mixup_alpha must be >= 0 .*found -1"):
        load_config("demo-student", ["loss.distill_mixup_alpha=-1"])
    assert load_config("paper-student").loss.distill_mixup_alpha == 0


def _output(rows: int, generator: torch.Generator) -> TrainOutput:
    def r(*shape):
        return torch.randn(*shape, generator=generator)
    return TrainOutput(r(rows, 6), r(rows, 4), r(rows, 3), [r(rows, 5), r(rows, 2)], [None, None])


def test_unlabelled_rows_enter_the_distillation_terms_only():
    g = torch.Generator().manual_seed(0)
    student, teacher = _output(8, g), _output(8, g)
    labels = torch.tensor([0, 0, 1, 1])
    weights = LossConfig(compat_weight=1.0)
    both = compute_losses(student, labels, weights, teacher)
    clean = compute_losses(student.first(4), labels, weights, teacher.first(4))
    for term in ("id", "triplet"):  # the labelled rows only
        assert torch.equal(both[term], clean[term])
    altered_student = replace(student, pooled=torch.cat([student.pooled[:4], student.pooled[4:] * 3]),
                              logits=torch.cat([student.logits[:4], student.logits[4:] * 3]))
    altered = compute_losses(altered_student, labels, weights, teacher)
    assert torch.equal(altered["id"], both["id"]) and torch.equal(altered["triplet"], both["triplet"])
    for term in ("kd", "feature", "compat"):  # all rows
        assert not torch.allclose(both[term], clean[term])
    assert not torch.allclose(altered["kd"], both["kd"])


def test_teacher_and_student_see_the_mixed_copy_and_resetting_the_clean_batch_only():
    cfg = load_config("demo-student", ["loss.distill_mixup_alpha=1", "loss.compat_weight=0", "cdd.memory_size=64",
                                       "data.height=32", "data.width=16"])
    spec = ArchSpec(depth=18, width=0.125, embedding_dim=16, num_classes=3, input_size=(32, 16))
    teacher = ReIDNet(spec).eval()
    student = ReIDNet(replace(spec, indicators=True)).train()
    step = build_step(cfg, student, torch.device("cpu"), teacher, teacher_flops=10**9)
    seen, rows = {}, []

    def recording(name, forward):
        return lambda x: (seen.setdefault(name, x.clone()), forward(x))[1]

    teacher.forward_train = recording("teacher", teacher.forward_train)
    step.forward = recording("student", step.forward)
    update = step.resetter.update
    step.resetter.update = lambda pre, post, left, *_: (rows.append((pre[0].shape[0], post[0].shape[0])),
                                                    update(pre, post, left))[1]
    images, labels = torch.randn(4, 3, 32, 16), torch.tensor([0, 0, 1, 1])
    step(images, labels, grg_active=True, steps_left=10, step_index=2)
    expected = DistillMixup(1.0, cfg.run.seed)(images, 2)
    assert torch.equal(seen["teacher"], expected) and torch.equal(seen["student"], expected)
    assert rows == [(4, 4)]


def test_a_real_step_gives_id_and_triplet_exactly_the_labelled_rows():
    """The step hands ID and triplet the B labelled rows of the student's 2B-row forward with the B labels,
    never the mixed half (with the labels repeated for it); the values it reports are those terms."""
    cfg = load_config("demo-student", ["loss.distill_mixup_alpha=1", "cdd.memory_size=64", "data.height=32",
                                       "data.width=16", "loss.id_weight=1", "loss.triplet_weight=1"])
    spec = ArchSpec(depth=18, width=0.125, embedding_dim=16, num_classes=3, input_size=(32, 16))
    torch.manual_seed(0)
    teacher = ReIDNet(spec).eval()
    student = ReIDNet(replace(spec, indicators=True)).train()
    step = build_step(cfg, student, torch.device("cpu"), teacher, teacher_flops=10**9)
    outputs = []
    forward = step.forward
    step.forward = lambda x: (outputs.append(forward(x)), outputs[-1])[1]
    images, labels = torch.randn(6, 3, 32, 16), torch.tensor([0, 0, 1, 1, 2, 2])
    stats = step(images, labels, grg_active=True, steps_left=10, step_index=1)
    (out,) = outputs
    assert out.logits.shape[0] == out.pooled.shape[0] == 12  # the student's forward covered the mixed copy
    w = cfg.loss

    def id_and_triplet(rows: TrainOutput, targets: torch.Tensor) -> tuple[float, float]:
        logits, pooled = rows.logits.detach().float(), rows.pooled.detach().float()
        return (w.id_weight * float(cross_entropy_label_smooth(logits, targets, w.label_smoothing)),
                w.triplet_weight * float(batch_hard_triplet(pooled, targets, w.triplet_margin)))

    labelled = id_and_triplet(out.first(6), labels)
    assert (stats["id"], stats["triplet"]) == pytest.approx(labelled, rel=1e-6)
    every_row = id_and_triplet(out, torch.cat([labels, labels]))  # what feeding the mixed half would report
    assert every_row[0] != pytest.approx(labelled[0], rel=1e-3) and every_row[1] != pytest.approx(labelled[1], rel=1e-3)


def _student(root, out, teacher_run, alpha, **fit):
    return fit_tiny_student(root, out, teacher_run, 2, [f"loss.distill_mixup_alpha={alpha}"], **fit)


def test_tiny_run_with_mixing_resumes_exactly_and_differs_from_one_without(tiny_reid_root, teacher_run, tmp_path):
    straight = tmp_path / "straight"
    _student(tiny_reid_root, straight, teacher_run, 1.0)
    state = load_checkpoint(straight / "checkpoint.pt")
    assert sum(int(m.sum()) for m in state["grg"]["masks"]) > 0
    assert_slim_equals_full(state["model"], ArchSpec.load(straight / "arch.json"))

    resumed = tmp_path / "resumed"  # "killed" after the epoch-1 checkpoint
    _student(tiny_reid_root, resumed, teacher_run, 1.0, stop_after_epochs=1)
    _student(tiny_reid_root, resumed, teacher_run, 1.0, resume=True)
    for key, value in load_checkpoint(resumed / "checkpoint.pt")["model"].items():
        assert torch.equal(value, state["model"][key]), key

    plain = tmp_path / "plain"  # the same run without the mixed copy trains other weights
    _student(tiny_reid_root, plain, teacher_run, 0.0)
    plain_model = load_checkpoint(plain / "checkpoint.pt")["model"]
    assert not torch.equal(plain_model["backbone.conv1.weight"], state["model"]["backbone.conv1.weight"])
