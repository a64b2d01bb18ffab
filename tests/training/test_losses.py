"""Known-answer tests for the CDD loss terms."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training.losses import (
    batch_hard_triplet,
    cross_entropy_label_smooth,
    feature_distillation,
    group_lasso,
    group_lasso_subgradient,
    logit_distillation,
)


def test_label_smoothing_matches_hand_computation() -> None:
    # softmax(log [1, 2, 1]) = [0.25, 0.5, 0.25]; label 1, epsilon 0.1, K = 3
    # targets = [0.1/3, 0.9 + 0.1/3, 0.1/3]
    # loss = -(0.1/3 * ln 0.25 + (0.9 + 0.1/3) * ln 0.5 + 0.1/3 * ln 0.25)
    logits = torch.log(torch.tensor([[1.0, 2.0, 1.0]]))
    expected = -(2 * (0.1 / 3) * math.log(0.25) + (0.9 + 0.1 / 3) * math.log(0.5))
    loss = cross_entropy_label_smooth(logits, torch.tensor([1]), epsilon=0.1)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.7394, abs=1e-4)  # 0.0924 + 0.6470, for the reader


def test_label_smoothing_agrees_with_torch_and_reduces_to_plain_ce() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=gen)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    smoothed = cross_entropy_label_smooth(logits, labels, epsilon=0.1)
    assert smoothed.item() == pytest.approx(
        F.cross_entropy(logits, labels, label_smoothing=0.1).item(), rel=1e-6
    )
    plain = cross_entropy_label_smooth(logits, labels, epsilon=0.0)
    assert plain.item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    assert smoothed.item() != pytest.approx(plain.item(), rel=1e-3)


def test_label_smoothing_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="epsilon"):
        cross_entropy_label_smooth(torch.zeros(2, 3), torch.tensor([0, 1]), epsilon=1.0)
    with pytest.raises(ValueError, match="labels"):
        cross_entropy_label_smooth(torch.zeros(2, 3), torch.tensor([0, 1, 2]))


def test_batch_hard_triplet_picks_hardest_pairs() -> None:
    # 1-D points: class A at 0, 1, 5; class B at 2 (B has no positive: excluded as an anchor).
    # anchor 0: hardest pos |0-5| = 5, hardest neg |0-2| = 2 -> 5 - 2 + 0.35 = 3.35
    # anchor 1: hardest pos |1-5| = 4, hardest neg |1-2| = 1 -> 4 - 1 + 0.35 = 3.35
    # anchor 5: hardest pos |5-0| = 5, hardest neg |5-2| = 3 -> 5 - 3 + 0.35 = 2.35
    # mean = (3.35 + 3.35 + 2.35) / 3
    features = torch.tensor([[0.0], [1.0], [5.0], [2.0]])
    labels = torch.tensor([0, 0, 0, 1])
    loss = batch_hard_triplet(features, labels, margin=0.35)
    assert loss.item() == pytest.approx((3.35 + 3.35 + 2.35) / 3, rel=1e-5)


def test_batch_hard_triplet_matches_brute_force_on_random_data() -> None:
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(12, 7, generator=gen)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    expected = []
    for a in range(12):
        d = [(features[a] - features[j]).norm().item() for j in range(12)]
        pos = max(d[j] for j in range(12) if labels[j] == labels[a] and j != a)
        neg = min(d[j] for j in range(12) if labels[j] != labels[a])
        expected.append(max(pos - neg + 0.35, 0.0))
    loss = batch_hard_triplet(features, labels, margin=0.35)
    assert loss.item() == pytest.approx(sum(expected) / 12, rel=1e-4)


def test_batch_hard_triplet_gradients_finite_for_identical_vectors() -> None:
    features = torch.ones(4, 8, requires_grad=True)
    loss = batch_hard_triplet(features, torch.tensor([0, 0, 1, 1]), margin=0.35)
    loss.backward()
    assert loss.item() == pytest.approx(0.35, abs=1e-4)  # all distances ~0 -> margin
    assert torch.isfinite(features.grad).all()


def test_batch_hard_triplet_without_valid_anchor_is_zero_with_grad() -> None:
    features = torch.randn(3, 4, requires_grad=True)
    loss = batch_hard_triplet(features, torch.tensor([5, 5, 5]))  # no negatives at all
    assert loss.item() == 0.0
    loss.backward()
    assert features.grad is not None and torch.isfinite(features.grad).all()


def test_logit_distillation_zero_for_equal_logits_and_scaled_by_t_squared() -> None:
    gen = torch.Generator().manual_seed(2)
    student = torch.randn(5, 7, generator=gen)
    teacher = torch.randn(5, 7, generator=gen)
    assert logit_distillation(teacher.clone(), teacher).abs().item() < 1e-6
    for temperature in (1.0, 2.0, 4.0):
        p_t = F.softmax(teacher / temperature, dim=1)
        log_p_s = F.log_softmax(student / temperature, dim=1)
        kl = (p_t * (p_t.log() - log_p_s)).sum(dim=1).mean()
        got = logit_distillation(student, teacher, temperature=temperature)
        assert got.item() == pytest.approx(kl.item() * temperature**2, rel=1e-5)


def test_logit_distillation_detaches_teacher() -> None:
    student = torch.randn(3, 4, requires_grad=True)
    teacher = torch.randn(3, 4, requires_grad=True)
    logit_distillation(student, teacher).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_feature_distillation_is_unsquared_and_sums_blocks() -> None:
    # block 0: one sample, difference (3, 4) -> distance 5 (squared would be 25)
    # block 1: two samples, distances 1 and 0 -> batch mean 0.5
    student = [torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0, 0.0], [2.0, 2.0, 2.0]])]
    teacher = [torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 0.0, 0.0], [2.0, 2.0, 2.0]])]
    # each block must have the same batch size in practice; blocks are independent here
    assert feature_distillation(student[:1], teacher[:1]).item() == pytest.approx(5.0)
    assert feature_distillation(student, teacher).item() == pytest.approx(5.5)


def test_feature_distillation_gradients_and_detach() -> None:
    student = [torch.ones(2, 3, requires_grad=True), torch.zeros(2, 4, requires_grad=True)]
    teacher = [torch.ones(2, 3, requires_grad=True), torch.ones(2, 4, requires_grad=True)]
    loss = feature_distillation(student, teacher)  # block 0 identical: zero difference
    loss.backward()
    assert all(t.grad is None for t in teacher)
    assert torch.isfinite(student[0].grad).all() and torch.isfinite(student[1].grad).all()
    # d/ds of mean_j ||s_j - t_j|| = (s - t) / ||s - t|| / B = -1/2 / 2 per entry for block 1
    assert torch.allclose(student[1].grad, torch.full((2, 4), -0.25))


def test_feature_distillation_names_bad_block() -> None:
    student = [torch.zeros(2, 3), torch.zeros(2, 4)]
    with pytest.raises(ValueError, match="block 1"):
        feature_distillation(student, [torch.zeros(2, 3), torch.zeros(2, 5)])
    with pytest.raises(ValueError, match="2 student blocks but 1 teacher"):
        feature_distillation(student, [torch.zeros(2, 3)])


def test_group_lasso_is_row_norm_sum_not_l1() -> None:
    w2d = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])  # row norms 5, 0, 1
    w4d = torch.tensor([[1.0, 1.0], [2.0, 0.0]]).reshape(2, 2, 1, 1)  # row norms sqrt(2), 2
    value = group_lasso([w2d, w4d])
    assert value.item() == pytest.approx(6.0 + math.sqrt(2.0) + 2.0, rel=1e-6)
    l1 = w2d.abs().sum() + w4d.abs().sum()
    assert value.item() != pytest.approx(l1.item())
    manual = sum(
        float(torch.linalg.vector_norm(row)) for w in (w2d, w4d) for row in w.reshape(w.shape[0], -1)
    )
    assert value.item() == pytest.approx(manual, rel=1e-6)


def test_group_lasso_rejects_bad_shapes_and_empty() -> None:
    with pytest.raises(ValueError, match="indicator weight 1"):
        group_lasso([torch.eye(2), torch.zeros(2, 2, 3, 3)])
    with pytest.raises(ValueError, match="no indicator weights"):
        group_lasso([])


def test_group_lasso_gradient_is_finite_for_zero_rows() -> None:
    weight = torch.tensor([[0.0, 0.0], [3.0, 4.0]], requires_grad=True)
    group_lasso([weight]).backward()
    assert torch.isfinite(weight.grad).all()
    assert torch.allclose(weight.grad, torch.tensor([[0.0, 0.0], [0.6, 0.8]]))


def test_group_lasso_subgradient_rows_unit_norm_zero_rows_zero() -> None:
    weight = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0], [0.0, -2.0, 0.0]]).reshape(3, 3, 1, 1)
    sub = group_lasso_subgradient(weight)
    assert sub.shape == weight.shape
    rows = sub.reshape(3, 3)
    assert torch.allclose(rows[0], torch.tensor([0.6, 0.8, 0.0]))
    assert torch.equal(rows[1], torch.zeros(3))
    assert torch.allclose(rows[2], torch.tensor([0.0, -1.0, 0.0]))
    assert torch.allclose(torch.linalg.vector_norm(rows[[0, 2]], dim=1), torch.ones(2))


def test_group_lasso_subgradient_equals_autograd_gradient() -> None:
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(6, 6, generator=gen, requires_grad=True)
    group_lasso([weight]).backward()
    sub = group_lasso_subgradient(weight)
    assert not sub.requires_grad
    assert torch.allclose(sub, weight.grad, atol=1e-6)
