"""Searching an `ItemTable` with its search structure: exact brute force over (a subset of) the rows, and
one structure search for a batch of queries, restricted to allowed labels (a metadata filter) by the
structure's ID selector. Results are per query (rows int64, scores), best first, as arrays: the ranking
of a whole batch is a few numpy calls, with no Python work per hit. The caller holds the read lock.
"""

from __future__ import annotations

import numpy as np

from serving.index.exact_search import exact_top_k
from serving.index.item_table import ItemTable
from serving.index.searcher import Searcher

__all__ = ["Ranked", "exact_rows", "structure_search"]

Ranked = tuple[np.ndarray, np.ndarray]
"""One query's result: (rows int64 (n,), scores (n,)), best first."""


def exact_rows(table: ItemTable, queries: np.ndarray, k: int, rows: np.ndarray | None) -> list[Ranked]:
    """Brute-force top-k over all rows (or the given subset): per query (rows, scores), best first."""
    vectors = table.vectors if rows is None else table.vectors[rows]
    found = []
    for hits in exact_top_k(queries, vectors, k):
        positions = np.fromiter((pos for pos, _ in hits), dtype=np.int64, count=len(hits))
        scores = np.fromiter((score for _, score in hits), dtype=np.float64, count=len(hits)).astype(np.float32)
        found.append((positions if rows is None else rows[positions], scores))
    return found


def structure_search(
    table: ItemTable, searcher: Searcher, queries: np.ndarray, k: int, allowed: np.ndarray | None, refine: int
) -> list[Ranked]:
    """One structure search for every query (restricted to ``allowed`` labels by an ID selector); with
    ``refine`` > 1 (ivfpq) k * refine candidates are re-scored with the exact vectors; a filtered query
    that comes back short of min(k, matching) is answered by exact search over the matching rows.
    Per query the found rows (labels the table knows) by descending score, ties in the structure's order."""
    n = len(table)
    want = k if allowed is None else min(k, int(allowed.size))
    scores, labels = searcher.search(queries, min(n, k * refine), allowed)
    rows = table.rows_of_labels(labels)
    if refine > 1:
        scores = np.einsum("qd,qkd->qk", queries, table.vectors[np.where(rows >= 0, rows, 0)])
    missing = rows < 0
    if missing.any() or not (scores[:, 1:] <= scores[:, :-1]).all():
        # Found rows first, then by descending score; lexsort is stable, so ties keep the structure's order.
        order = np.lexsort((-scores, missing), axis=-1)
        rows, scores = np.take_along_axis(rows, order, -1), np.take_along_axis(scores, order, -1)
    # else every row is found and already best first: a stable sort would not move anything
    counts = np.minimum((~missing).sum(axis=1), want).tolist()
    results = [(rows[i, :count], scores[i, :count]) for i, count in enumerate(counts)]
    short = [i for i, count in enumerate(counts) if count < want] if allowed is not None else []
    if short:
        exact = exact_rows(table, queries[short], k, table.rows_of_labels(allowed))
        for i, found in zip(short, exact, strict=True):
            results[i] = found
    return results
