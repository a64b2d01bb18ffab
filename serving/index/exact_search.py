"""Brute-force top-k by inner product, in query chunks so the similarity block stays bounded."""

from __future__ import annotations

import numpy as np

__all__ = ["exact_top_k"]


def exact_top_k(
    queries: np.ndarray, vectors: np.ndarray, k: int, chunk: int = 1024
) -> list[list[tuple[int, float]]]:
    """Per row of ``queries`` (Q, D): [(position in ``vectors`` (N, D), score)] for the min(k, N) highest
    inner products, best first; equal scores keep position order (stable)."""
    take = min(k, vectors.shape[0])
    out: list[list[tuple[int, float]]] = []
    if take == 0:
        return [[] for _ in range(queries.shape[0])]
    for start in range(0, queries.shape[0], chunk):
        sims = queries[start : start + chunk] @ vectors.T
        part = np.argpartition(-sims, take - 1, axis=1)[:, :take] if take < sims.shape[1] else None
        for i in range(sims.shape[0]):
            cand = np.arange(sims.shape[1]) if part is None else np.sort(part[i])
            order = cand[np.argsort(-sims[i, cand], kind="stable")]
            out.append([(int(r), float(v)) for r, v in zip(order, sims[i, order], strict=True)])
    return out
