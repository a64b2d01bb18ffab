"""Compatibility loss (asymmetric retrieval): known answers, its place in the objective, its config, the
three-way evaluation, and a real tiny student run with the loss on vs off."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from training.asymmetric_eval import AsymmetricEvaluator
from training.compatibility import compatibility_loss, embed_with_running_stats
from training.config import ConfigError, LossConfig, load_config
from training.distillation import compute_losses
from training.models.head import EmbeddingHead
from training.models.network import TrainOutput


def test_cosine_form_is_zero_for_same_direction_and_one_for_orthogonal() -> None:
    teacher = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert compatibility_loss(3.0 * teacher, teacher, "cosine").item() == pytest.approx(0.0, abs=1e-7)
    orthogonal = torch.tensor([[0.0, 5.0], [1.0, 0.0]])
    assert compatibility_loss(orthogonal, teacher, "cosine").item() == pytest.approx(1.0, abs=1e-7)
    opposite = -teacher
    assert compatibility_loss(opposite, teacher, "cosine").item() == pytest.approx(2.0, abs=1e-7)


def test_l2_form_is_the_mean_unsquared_distance_and_sees_scale() -> None:
    teacher = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    student = torch.tensor([[4.0, 4.0], [0.0, 2.0]])  # distances 5 and 0
    assert compatibility_loss(student, teacher, "l2").item() == pytest.approx(2.5, rel=1e-6)
    # Same directions, different scale: cosine is blind to it, l2 is not.
    assert compatibility_loss(2.0 * teacher, teacher, "l2").item() == pytest.approx((1.0 + 2.0) / 2, rel=1e-6)


def test_gradient_reaches_the_student_only() -> None:
    student = torch.tensor([[1.0, 1.0]], requires_grad=True)
    teacher = torch.tensor([[1.0, 0.0]], requires_grad=True)
    compatibility_loss(student, teacher, "cosine").backward()
    assert teacher.grad is None
    # d(1 - cos)/ds at s = (1, 1), t = (1, 0): -(t/|s||t| - cos * s/|s|^2) = (-1/(2*sqrt2), +1/(2*sqrt2))
    expected = torch.tensor([[-1.0, 1.0]]) / (2 * math.sqrt(2))
    assert torch.allclose(student.grad, expected, atol=1e-6)


def test_bad_shapes_and_forms_are_rejected() -> None:
    with pytest.raises(ValueError, match="embedding_dim must equal"):
        compatibility_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="compat_form must be one of"):
        compatibility_loss(torch.ones(2, 3), torch.ones(2, 3), "dot")


def _trained_head() -> EmbeddingHead:
    """A head whose BatchNorms have non-trivial running statistics (a few train-mode batches)."""
    torch.manual_seed(0)
    head = EmbeddingHead(6, 4)
    head.train()
    with torch.no_grad():
        for _ in range(5):
            head(torch.randn(8, 6) * 3.0 + 2.0)
    return head


def test_running_stats_embedding_is_the_eval_embedding_in_train_mode_and_leaves_stats_alone() -> None:
    head = _trained_head()
    pooled = torch.randn(5, 6, requires_grad=True)
    stats = [t.clone() for t in (head.bn_pool.running_mean, head.bn_embed.running_var)]
    embedding = embed_with_running_stats(head, pooled)
    assert head.training  # the head's mode is untouched
    assert torch.equal(head.bn_pool.running_mean, stats[0]) and torch.equal(head.bn_embed.running_var, stats[1])
    with torch.no_grad():
        evaluated = head.eval()(pooled)
        batch_stats = head.train()(pooled)
    assert torch.allclose(embedding, evaluated, atol=1e-6)
    assert not torch.allclose(embedding, batch_stats, atol=1e-2)  # train-mode BN would differ
    embedding.sum().backward()
    assert pooled.grad is not None and pooled.grad.abs().sum() > 0 and head.embed.weight.grad is not None


def test_compute_losses_compares_the_head_on_running_stats_with_the_teacher() -> None:
    head = _trained_head()
    pooled = torch.randn(5, 6)
    with torch.no_grad():
        target = head.eval()(pooled)
    head.train()
    student = TrainOutput(pooled=pooled, embedding=torch.randn(5, 4), logits=None, pre_descriptors=[],
                          post_descriptors=[])
    teacher = TrainOutput(pooled=pooled, embedding=target, logits=None, pre_descriptors=[], post_descriptors=[])
    weights = LossConfig(id_weight=0.0, triplet_weight=0.0, kd_weight=0.0, feature_weight=0.0, lasso_lambda=0.0,
                         compat_weight=1.0)
    with_head = compute_losses(student, torch.zeros(5), weights, teacher, student_head=head)["compat"]
    assert with_head.item() == pytest.approx(0.0, abs=1e-6)  # the running-stats embedding equals the target
    assert compute_losses(student, torch.zeros(5), weights, teacher)["compat"].item() > 0.1


def _output(embedding: torch.Tensor) -> TrainOutput:
    return TrainOutput(pooled=embedding, embedding=embedding, logits=None, pre_descriptors=[],
                       post_descriptors=[])


def test_compute_losses_adds_the_weighted_term_only_when_on_and_with_a_teacher() -> None:
    student, teacher = _output(torch.tensor([[0.0, 1.0]])), _output(torch.tensor([[1.0, 0.0]]))
    base = dict(id_weight=0.0, triplet_weight=0.0, kd_weight=0.0, feature_weight=0.0, lasso_lambda=0.0)
    labels = torch.tensor([0])
    on = compute_losses(student, labels, LossConfig(**base, compat_weight=2.5), teacher)
    assert set(on) == {"compat"} and on["compat"].item() == pytest.approx(2.5)  # 2.5 x (1 - cos 90deg)
    assert compute_losses(student, labels, LossConfig(**base), teacher) == {}
    assert compute_losses(student, labels, LossConfig(**base, compat_weight=2.5), None) == {}


def test_config_fields_validate_and_stay_off_in_the_paper_preset() -> None:
    assert load_config("paper-student").loss.compat_weight == 0.0
    cfg = load_config("paper-student", ["loss.compat_weight=0.5", "loss.compat_form=l2"])
    assert (cfg.loss.compat_weight, cfg.loss.compat_form) == (0.5, "l2")
    with pytest.raises(ConfigError, match=r"loss.compat_form must be one of \('cosine', 'l2'\), found 'dot'"):
        load_config("paper-student", ["loss.compat_form=dot"])
    with pytest.raises(ConfigError, match="compat_weight must be >= 0"):
        load_config("paper-student", ["loss.compat_weight=-1"])


class _Points(Dataset):
    """2-D points as 'images' (2, 1, 1) yielding (image, pid, camid, index)."""

    def __init__(self, points: np.ndarray, pids: list[int], cams: list[int]) -> None:
        self.points, self.pids, self.cams = torch.tensor(points, dtype=torch.float32), pids, cams

    def __len__(self) -> int:
        return len(self.pids)

    def __getitem__(self, index: int):
        return self.points[index].reshape(2, 1, 1), self.pids[index], self.cams[index], index


class _Linear(nn.Module):
    def __init__(self, matrix: list[list[float]]) -> None:
        super().__init__()
        self.register_buffer("matrix", torch.tensor(matrix))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1) @ self.matrix


def _reid_sets() -> tuple[_Points, _Points]:
    # Identity i sits at angle i * 30 degrees (plus a small per-image offset); query camera 1, gallery 2.
    angles = np.radians([0, 30, 60, 90, 120, 150])
    gallery = [(a + d) for a in angles for d in (-0.05, 0.05)]
    g_points = np.stack([np.cos(gallery), np.sin(gallery)], 1)
    q_points = np.stack([np.cos(angles + 0.01), np.sin(angles + 0.01)], 1)
    return (_Points(q_points, list(range(6)), [1] * 6),
            _Points(g_points, [i for i in range(6) for _ in range(2)], [2] * 12))


def test_three_way_evaluation_tells_a_compatible_student_from_a_rotated_one() -> None:
    query, gallery = _reid_sets()
    teacher = _Linear([[1.0, 0.0], [0.0, 1.0]])
    evaluator = AsymmetricEvaluator(teacher, query, gallery, "cpu", "reid", batch_size=4)
    # A student that scales the teacher's embedding lives in the same space (cosine ignores scale).
    same_space = evaluator(_Linear([[3.0, 0.0], [0.0, 3.0]]))
    assert same_space["mAP"] == pytest.approx(100.0)
    assert same_space["teacher"] == {"mAP": pytest.approx(100.0), "rank1": pytest.approx(100.0)}
    assert same_space["asymmetric"] == {"mAP": pytest.approx(100.0), "rank1": pytest.approx(100.0)}
    # A student mirrored about 45 degrees (angle a -> 90 - a) is as good on its own (a reflection keeps
    # cosines) but every query lands on another identity in the teacher's gallery: asymmetric rank-1 is 0.
    mirrored = evaluator(_Linear([[0.0, 1.0], [1.0, 0.0]]))
    assert mirrored["mAP"] == pytest.approx(100.0)
    assert mirrored["teacher"]["mAP"] == pytest.approx(100.0)
    assert mirrored["asymmetric"]["rank1"] == pytest.approx(0.0)
    assert mirrored["asymmetric"]["mAP"] < 50.0
    assert mirrored["num_queries"] == 6


def test_three_way_evaluation_class_protocol_removes_each_query_from_its_own_ranking() -> None:
    query, _ = _reid_sets()
    first = query.points.numpy().reshape(6, 2)
    angles = np.arctan2(first[:, 1], first[:, 0]) + np.radians(20)
    points = np.concatenate([first, np.stack([np.cos(angles), np.sin(angles)], 1)])
    # Identity i at a_i = 30i and its twin at a_i + 20 degrees, so 0, 20, 30, 50, ..., 150, 170: every item
    # but the two at the ends has an item of another identity 10 degrees away, nearer than its twin.
    both = _Points(points, list(range(6)) * 2, [0] * 12)
    evaluator = AsymmetricEvaluator(_Linear([[1.0, 0.0], [0.0, 1.0]]), both, None, "cpu", "class")
    result = evaluator(_Linear([[2.0, 0.0], [0.0, 2.0]]))
    # Self removed: the end items (0 and 170) find their twin first (AP 1), the ten others second (AP 1/2):
    # mAP = (2 + 10 / 2) / 12 = 7/12. Self kept (ranked first) it would be (2 + 10 * (1 + 2/3) / 2) / 12 = 31/36.
    assert result["asymmetric"]["mAP"] == pytest.approx(100 * 7 / 12, abs=1e-3)
    assert result["asymmetric"]["rank1"] == pytest.approx(100 * 2 / 12, abs=1e-3)
    assert result["teacher"]["mAP"] == pytest.approx(100 * 7 / 12, abs=1e-3)
    with pytest.raises(ValueError, match='protocol "reid" needs'):
        AsymmetricEvaluator(_Linear([[1.0, 0.0], [0.0, 1.0]]), both, None, "cpu", "reid")(
            _Linear([[1.0, 0.0], [0.0, 1.0]]))


def test_three_way_evaluation_rejects_a_student_of_another_dimension() -> None:
    query, gallery = _reid_sets()
    evaluator = AsymmetricEvaluator(_Linear([[1.0, 0.0], [0.0, 1.0]]), query, gallery, "cpu", "reid")
    with pytest.raises(ValueError, match="student embeds 3-d vectors, the teacher 2-d"):
        evaluator(_Linear([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))


def _mean_cosine_to_teacher(run_dir, teacher_run) -> float:
    """Mean cosine between the deployed student's and the teacher's embeddings of the query images."""
    from export.rebuild import build_slim
    from export.run_dir import load_run_dir
    from training.data.layouts import load_dataset
    from training.data.transforms import load_rgb, normalize_uint8, resize_uint8

    student, teacher = build_slim(load_run_dir(run_dir)), build_slim(load_run_dir(teacher_run))
    run = load_run_dir(run_dir)
    records = load_dataset(run.dataset, run.data_root).query
    images = np.stack([resize_uint8(load_rgb(r.path), run.spec.input_size) for r in records])
    with torch.no_grad():
        x = normalize_uint8(images, run.mean, run.std)
        s, t = nn.functional.normalize(student(x), dim=1), nn.functional.normalize(teacher(x), dim=1)
    return float((s * t).sum(1).mean())


def _train_student(root, teacher_run, out, overrides_for, compat_weight: float) -> dict:
    from training.distributed import init_distributed
    from training.trainer import Trainer

    # Feature distillation is off in both runs: on this 2-epoch teacher its term is ~100x the others and
    # would hide the difference the compatibility term makes.
    overrides = overrides_for(root, out, "student", teacher_run) + [
        "loss.feature_weight=0", "optim.lr=0.01", f"loss.compat_weight={compat_weight}"]
    Trainer(load_config("demo-teacher", overrides), init_distributed("cpu")).fit()
    return json.loads((out / "metrics.json").read_text())


def test_student_run_with_the_loss_on_stays_closer_to_the_teacher_and_reports_three_scores(
        tiny_reid_root, teacher_run, overrides_for, tmp_path) -> None:
    on = _train_student(tiny_reid_root, teacher_run, tmp_path / "on", overrides_for, 20.0)
    off = _train_student(tiny_reid_root, teacher_run, tmp_path / "off", overrides_for, 0.0)
    assert on["epochs"][0]["loss"]["compat"] > 0 and "compat" not in off["epochs"][0]["loss"]
    for key in ("teacher", "asymmetric"):
        assert set(on["final"][key]) == {"mAP", "rank1"}
        assert set(on["epochs"][0]["eval"][key]) == {"mAP", "rank1"}  # every evaluation, not only the last
    assert on["final"]["teacher"] == off["final"]["teacher"]  # the frozen teacher scores the same
    closer_on = _mean_cosine_to_teacher(tmp_path / "on", teacher_run)
    closer_off = _mean_cosine_to_teacher(tmp_path / "off", teacher_run)
    assert closer_on > closer_off + 0.05, (closer_on, closer_off)
