"""The CDD objective as a task object: named, weighted loss terms from one student/teacher forward.

ID (label-smoothed CE) + batch-hard triplet on the pooled feature + logit KL (T^2-scaled) + per-block
feature distillation on pooled pre-indicator descriptors + group lasso on the indicators; optionally the
compatibility term of asymmetric retrieval (`training.compatibility`); with `training.distill_mixup` the
distillation terms also cover a mixed, unlabelled copy of the batch. During gradient
resetting the lasso is applied by hand to the gradients (see training/grg.py), so it leaves the loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from training.compatibility import compatibility_loss, embed_with_running_stats
from training.config import LossConfig
from training.losses import (
    batch_hard_triplet,
    cross_entropy_label_smooth,
    feature_distillation,
    group_lasso,
    logit_distillation,
)
from training.models.head import EmbeddingHead
from training.models.network import TrainOutput

__all__ = ["compute_losses"]


def compute_losses(student: TrainOutput, labels: torch.Tensor, weights: LossConfig,
                   teacher: TrainOutput | None = None, indicator_weights: Sequence[torch.Tensor] = (),
                   lasso_in_loss: bool = True,
                   teacher_channels: Sequence[torch.Tensor] | None = None,
                   student_head: EmbeddingHead | None = None) -> dict[str, torch.Tensor]:
    """Weighted loss terms by name ("id", "triplet", "kd", "feature", "compat", "lasso"); their sum is the
    objective.

    ``teacher_channels`` (per block index tensors) selects teacher descriptor channels when the student's
    inner width is smaller than the teacher's (static slim students). ``student_head``: the student's head,
    to compare its embedding with the eval-mode teacher's on running BatchNorm statistics (compat term;
    without it the train-mode embedding is used).

    Rows of the outputs past ``len(labels)`` are unlabelled images (the mixed copy of
    `training.distill_mixup`): they enter the distillation terms only."""
    losses: dict[str, torch.Tensor] = {}
    labelled = student.first(labels.shape[0])
    if weights.id_weight and labelled.logits is not None:
        losses["id"] = weights.id_weight * cross_entropy_label_smooth(
            labelled.logits.float(), labels, weights.label_smoothing)
    if weights.triplet_weight:
        losses["triplet"] = weights.triplet_weight * batch_hard_triplet(
            labelled.pooled.float(), labels, weights.triplet_margin)
    if teacher is not None:
        if weights.kd_weight and student.logits is not None and teacher.logits is not None:
            losses["kd"] = weights.kd_weight * logit_distillation(
                student.logits.float(), teacher.logits.float(), weights.kd_temperature)
        if weights.feature_weight:
            targets = [t.float() for t in teacher.pre_descriptors]
            if teacher_channels is not None:
                targets = [t.index_select(1, idx.to(t.device)) for t, idx in zip(targets, teacher_channels,
                                                                                 strict=True)]
            losses["feature"] = weights.feature_weight * feature_distillation(
                [s.float() for s in student.pre_descriptors], targets)
        if weights.compat_weight:  # asymmetric retrieval: student embeddings in the teacher's space
            embedding = (student.embedding if student_head is None
                         else embed_with_running_stats(student_head, student.pooled))
            losses["compat"] = weights.compat_weight * compatibility_loss(
                embedding, teacher.embedding, weights.compat_form)
    if lasso_in_loss and weights.lasso_lambda and indicator_weights:
        losses["lasso"] = weights.lasso_lambda * group_lasso(indicator_weights)
    return losses
