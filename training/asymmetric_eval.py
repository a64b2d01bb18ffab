"""Three-way retrieval evaluation of a student against its frozen teacher: student/student,
teacher/teacher and student-query/teacher-gallery (asymmetric retrieval, docs/asymmetric.md).

The teacher is frozen, so its features and its own metrics are computed once and reused at every
evaluation of the run; each evaluation then extracts the student's features once and scores both
student galleries and the teacher gallery with them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from training.evaluate import PROTOCOLS, extract_features
from training.metrics import RetrievalMetrics, evaluate_retrieval

__all__ = ["AsymmetricEvaluator", "evaluate_pair"]

_Features = tuple[np.ndarray, np.ndarray, np.ndarray]  # (features (N, D), ids (N,), cams (N,))


@dataclass(frozen=True)
class _Split:
    query: _Features
    gallery: _Features | None  # None: the class protocol's query set is its own gallery


def _percent(metrics: RetrievalMetrics) -> dict[str, float]:
    return {k: round(v, 3) for k, v in metrics.as_percent().items()}


def evaluate_pair(query: _Features, gallery: _Features | None, protocol: str) -> RetrievalMetrics:
    """mAP / CMC of ``query`` features against ``gallery`` features (each (features, ids, cams)), which may
    come from different models. protocol "reid": same id + same camera removed; "class": ``gallery`` None
    means the query set is its own gallery (each query removed from its own ranking only).
    Raises ValueError for an unknown protocol, a missing "reid" gallery or mismatched dimensions."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if gallery is None:
        if protocol != "class":
            raise ValueError('protocol "reid" needs gallery features; only protocol "class" may omit them')
        return evaluate_retrieval(query[0], query[0], query[1], query[1], query_is_gallery=True)
    cams = (query[2], gallery[2]) if protocol == "reid" else (None, None)
    return evaluate_retrieval(query[0], gallery[0], query[1], gallery[1], query_cams=cams[0], gallery_cams=cams[1])


def _cross(query: _Features, gallery_side: _Split, protocol: str) -> RetrievalMetrics:
    """Queries of one model against the gallery embedded by another (class protocol: the same item set)."""
    if gallery_side.gallery is not None:
        return evaluate_pair(query, gallery_side.gallery, protocol)
    target = gallery_side.query
    return evaluate_retrieval(query[0], target[0], query[1], target[1], query_is_gallery=True)


class AsymmetricEvaluator:
    """Call with a student network (eval-mode forward: images -> (B, D) embeddings) to get its metrics
    (the usual percent keys: mAP, rank1, rank5, rank10, num_queries, ...) plus ``teacher`` (teacher/teacher
    mAP and rank1) and ``asymmetric`` (student queries against the teacher-embedded gallery, mAP and
    rank1). ``gallery_set`` None is allowed for protocol "class" only (the query set is its own gallery).
    The student's embedding_dim must equal the teacher's for the asymmetric score (ValueError otherwise)."""

    def __init__(self, teacher: nn.Module, query_set: Dataset, gallery_set: Dataset | None,
                 device: torch.device | str, protocol: str, batch_size: int = 64) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        self.teacher, self.query_set, self.gallery_set = teacher, query_set, gallery_set
        self.device, self.protocol, self.batch_size = torch.device(device), protocol, batch_size
        self._teacher: _Split | None = None
        self._teacher_metrics: dict[str, float] | None = None

    def _extract(self, model: nn.Module) -> _Split:
        query = extract_features(model, self.query_set, self.device, self.batch_size)
        gallery = None
        if self.gallery_set is not None and self.gallery_set is not self.query_set:
            gallery = extract_features(model, self.gallery_set, self.device, self.batch_size)
        return _Split(query, gallery)

    def _teacher_side(self) -> tuple[_Split, dict[str, float]]:
        if self._teacher is None or self._teacher_metrics is None:
            self._teacher = self._extract(self.teacher)
            self._teacher_metrics = _percent(evaluate_pair(self._teacher.query, self._teacher.gallery,
                                                           self.protocol))
        return self._teacher, self._teacher_metrics

    def teacher_metrics(self) -> dict[str, float]:
        """Teacher/teacher metrics in percent (computed on first use, then cached: the teacher is frozen)."""
        return dict(self._teacher_side()[1])

    def __call__(self, student: nn.Module) -> dict[str, object]:
        teacher_split, teacher = self._teacher_side()
        own = self._extract(student)
        dims = own.query[0].shape[1], teacher_split.query[0].shape[1]
        if dims[0] != dims[1]:
            raise ValueError(f"the student embeds {dims[0]}-d vectors, the teacher {dims[1]}-d; asymmetric "
                             "retrieval needs model.embedding_dim equal to the teacher's")
        result: dict[str, object] = dict(_percent(evaluate_pair(own.query, own.gallery, self.protocol)))
        asymmetric = _percent(_cross(own.query, teacher_split, self.protocol))
        result["teacher"] = {"mAP": teacher["mAP"], "rank1": teacher["rank1"]}
        result["asymmetric"] = {"mAP": asymmetric["mAP"], "rank1": asymmetric["rank1"]}
        return result
