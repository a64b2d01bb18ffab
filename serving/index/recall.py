"""`recall_at_k_vs_exact`: how much of the exact top-k an (approximate) gallery index returns."""

from __future__ import annotations

import numpy as np

from serving.index.gallery import GalleryIndex

__all__ = ["recall_at_k_vs_exact"]

_TIE_TOLERANCE = 1e-5


def recall_at_k_vs_exact(index: GalleryIndex, queries: np.ndarray, k: int) -> float:
    """Mean over queries of |approximate top-k ∩ exact top-k| / min(k, len(index)), in [0, 1].

    ``queries`` float32 (Q, dim). An approximate hit whose score ties the exact k-th score (within 1e-5)
    counts as found, so ties broken differently are not penalised. 1.0 for an exact index."""
    approx = index.search(queries, k)
    exact = index.search(queries, k, exact=True)
    total = 0.0
    for found, truth in zip(approx, exact, strict=True):
        if not truth:
            total += 1.0
            continue
        truth_ids = {hit.id for hit in truth}
        kth = truth[-1].score
        good = sum(1 for hit in found if hit.id in truth_ids or hit.score >= kth - _TIE_TOLERANCE)
        total += min(good, len(truth)) / len(truth)
    return total / max(1, len(exact))
