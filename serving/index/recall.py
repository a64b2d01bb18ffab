"""recall@k against exact search, defined once: `recall_at_k` is what ``cdd-index info --recall``
(`recall_at_k_vs_exact`), the operating-point tuner (`serving.index.operating_point`) and the index
benchmark all report.

The ground truth of a query is its exact top-k as ``(id, score)`` pairs, best first. A returned hit counts
as found when its id is in the truth or its score ties the exact k-th score within ``TIE_TOLERANCE``, so
ties broken differently are not penalised.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from serving.index.gallery import GalleryIndex

__all__ = ["TIE_TOLERANCE", "recall_at_k", "recall_at_k_vs_exact"]

TIE_TOLERANCE = 1e-5
"""A hit scoring at least the exact k-th score minus this counts as found."""


def recall_at_k(found: Sequence[Sequence[Any]], truth: Sequence[Sequence[tuple[str, float]]]) -> float:
    """Mean over queries of (found hits) / len(truth row), each query capped at 1; in [0, 1].

    ``found`` per query: the hits returned (objects with ``.id`` and ``.score``); ``truth`` per query: the
    exact top-k ``(id, score)``, best first. A query whose truth is empty (an empty gallery) counts 1.0;
    no queries give 0.0."""
    total = 0.0
    for hits, exact in zip(found, truth, strict=True):
        if not exact:
            total += 1.0
            continue
        exact_ids = {item_id for item_id, _ in exact}
        kth = exact[-1][1]
        good = sum(1 for hit in hits if hit.id in exact_ids or hit.score >= kth - TIE_TOLERANCE)
        total += min(good, len(exact)) / len(exact)
    return total / max(1, len(truth))


def recall_at_k_vs_exact(index: GalleryIndex, queries: np.ndarray, k: int) -> float:
    """`recall_at_k` of ``index``'s search against its own exact search, for ``queries`` float32 (Q, dim);
    1.0 for an exact index."""
    approx = index.search(queries, k)
    exact = index.search(queries, k, exact=True)
    return recall_at_k(approx, [[(hit.id, hit.score) for hit in row] for row in exact])
