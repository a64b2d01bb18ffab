"""Loss terms of Capacity Dynamic Distillation (docs/method.md, "Losses").

Every function is pure and returns a 0-dim tensor (except `group_lasso_subgradient`). Weights (the
0.5 on feature distillation, lambda on the lasso, ...) are applied by the caller, so each term can be
tested and logged on its own. Computations run in float32 even under autocast, so fp16 inputs do not
overflow in squared distances or softmax.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "batch_hard_triplet",
    "cross_entropy_label_smooth",
    "feature_distillation",
    "group_lasso",
    "group_lasso_subgradient",
    "logit_distillation",
]

# Squared distances are clamped to this before the square root: the gradient of sqrt at the clamp is
# 0.5 / 1e-6, large but finite, and below it the clamp passes no gradient at all.
_MIN_SQUARED_DISTANCE = 1e-12


def _check_logits_labels(logits: Tensor, labels: Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"logits must be 2-D (batch, num_classes), got shape {tuple(logits.shape)}")
    if labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"labels must be 1-D with one label per logits row ({logits.shape[0]}), "
            f"got shape {tuple(labels.shape)}"
        )


def cross_entropy_label_smooth(logits: Tensor, labels: Tensor, epsilon: float = 0.1) -> Tensor:
    """ID loss: cross-entropy against targets (1 - epsilon) * one_hot + epsilon / num_classes.

    logits: (B, K); labels: (B,) int64 class indices in [0, K). Mean over the batch.
    Raises ValueError on bad shapes or epsilon outside [0, 1).
    """
    _check_logits_labels(logits, labels)
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"epsilon must be in [0, 1), got {epsilon}")
    log_probs = F.log_softmax(logits.float(), dim=1)
    nll = -log_probs.gather(1, labels.long().unsqueeze(1)).squeeze(1)
    uniform = -log_probs.mean(dim=1)
    return ((1.0 - epsilon) * nll + epsilon * uniform).mean()


def _pairwise_euclidean(features: Tensor) -> Tensor:
    """(B, D) -> (B, B) Euclidean distances with a clamped (gradient-safe) square root."""
    squared_norms = features.pow(2).sum(dim=1)
    squared = squared_norms.unsqueeze(1) + squared_norms.unsqueeze(0) - 2.0 * features @ features.t()
    return squared.clamp(min=_MIN_SQUARED_DISTANCE).sqrt()


def batch_hard_triplet(features: Tensor, labels: Tensor, margin: float = 0.35) -> Tensor:
    """Batch-hard triplet loss on un-normalised features, Euclidean distance.

    For each anchor: hardest positive = farthest sample with the same label (other than itself),
    hardest negative = closest sample with a different label; loss = mean over anchors of
    relu(d_pos - d_neg + margin). Anchors lacking a positive or a negative in the batch are left out;
    if none remains the result is 0 (still attached to the graph, so backward works).
    features: (B, D); labels: (B,).
    """
    if features.dim() != 2:
        raise ValueError(f"features must be 2-D (batch, dim), got shape {tuple(features.shape)}")
    if labels.dim() != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(
            f"labels must be 1-D with one label per feature row ({features.shape[0]}), "
            f"got shape {tuple(labels.shape)}"
        )
    dist = _pairwise_euclidean(features.float())
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positive = same & ~eye
    negative = ~same
    hardest_pos = dist.masked_fill(~positive, float("-inf")).amax(dim=1)
    hardest_neg = dist.masked_fill(~negative, float("inf")).amin(dim=1)
    # An anchor without a positive (-inf) or a negative (+inf) gets relu(-inf) = 0 and weight 0; no
    # data-dependent branch, so no device synchronisation.
    per_anchor = F.relu(hardest_pos - hardest_neg + margin)
    valid = (positive.any(dim=1) & negative.any(dim=1)).to(per_anchor.dtype)
    return (per_anchor * valid).sum() / valid.sum().clamp(min=1.0)


def logit_distillation(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 2.0) -> Tensor:
    """KL(teacher || student) of softmax(logits / T), summed over classes, mean over the batch, times T^2.

    Both (B, K). The teacher logits are detached. Raises ValueError on shape mismatch or T <= 0.
    """
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ValueError(
            "student and teacher logits must both be (batch, num_classes), got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach().float() / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


def feature_distillation(student_descs: Sequence[Tensor], teacher_descs: Sequence[Tensor]) -> Tensor:
    """Sum over blocks of the batch-mean plain (unsquared) L2 distance between descriptors.

    student_descs[b], teacher_descs[b]: (B, p_b), the pooled 3x3 conv+BN outputs of block b. Teacher
    descriptors are detached. Raises ValueError (naming the block index) on length or shape mismatch.
    """
    if len(student_descs) != len(teacher_descs):
        raise ValueError(
            f"feature_distillation got {len(student_descs)} student blocks but {len(teacher_descs)} "
            "teacher blocks; student and teacher must share the architecture"
        )
    if len(student_descs) == 0:
        raise ValueError("feature_distillation got no blocks; pass one descriptor per residual block")
    terms = []
    for index, (student, teacher) in enumerate(zip(student_descs, teacher_descs, strict=True)):
        if student.shape != teacher.shape or student.dim() != 2:
            raise ValueError(
                f"block {index}: student and teacher descriptors must both be (batch, channels), got "
                f"{tuple(student.shape)} and {tuple(teacher.shape)}"
            )
        diff = student.float() - teacher.detach().float()
        terms.append(torch.linalg.vector_norm(diff, dim=1).mean())
    return torch.stack(terms).sum()


def _indicator_rows(weight: Tensor, index: int | None = None) -> Tensor:
    """View an indicator weight (p_out, p_in) or (p_out, p_in, 1, 1) as (p_out, p_in)."""
    where = "indicator weight" if index is None else f"indicator weight {index}"
    if weight.dim() == 2 or (weight.dim() == 4 and weight.shape[2:] == (1, 1)):
        return weight.reshape(weight.shape[0], -1)
    raise ValueError(
        f"{where} must have shape (p_out, p_in) or (p_out, p_in, 1, 1), got {tuple(weight.shape)}"
    )


def group_lasso(weights: Iterable[Tensor]) -> Tensor:
    """Unweighted group lasso: sum over weights of sum over output rows i of ||W[i, :]||_2.

    Row-wise L2 (channel groups), not element-wise L1; multiply by lambda in the caller.
    Raises ValueError for an empty iterable or a weight of the wrong shape.
    """
    terms = [
        torch.linalg.vector_norm(_indicator_rows(weight, index).float(), dim=1).sum()
        for index, weight in enumerate(weights)
    ]
    if not terms:
        raise ValueError("group_lasso got no indicator weights; pass the student's indicator weights")
    return torch.stack(terms).sum()


def group_lasso_subgradient(weight: Tensor, eps: float = 1e-12) -> Tensor:
    """Subgradient of the group lasso for one weight: W[i, :] / ||W[i, :]||, 0 for rows with norm <= eps.

    Same shape and dtype as `weight`, detached from the graph. Used by gradient resetting, which adds
    lambda times this to every row's gradient by hand.
    """
    rows = _indicator_rows(weight).detach()
    norms = torch.linalg.vector_norm(rows.float(), dim=1, keepdim=True)
    scale = torch.where(norms > eps, 1.0 / norms.clamp(min=eps), torch.zeros_like(norms))
    return (rows.float() * scale).to(weight.dtype).reshape(weight.shape)
