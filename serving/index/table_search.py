"""Searching an `ItemTable` with its search structure: exact brute force over (a subset of) the rows, and
one structure search for a batch of queries, restricted to allowed labels (a metadata filter) by the
structure's ID selector. Results are per query [(row, score)], best first. The caller holds the read lock.
"""

from __future__ import annotations

import numpy as np

from serving.index.exact_search import exact_top_k
from serving.index.item_table import ItemTable
from serving.index.searcher import Searcher

__all__ = ["exact_rows", "structure_search"]


def exact_rows(
    table: ItemTable, queries: np.ndarray, k: int, rows: np.ndarray | None
) -> list[list[tuple[int, float]]]:
    """Brute-force top-k over all rows (or the given subset): per query [(row, score)], best first."""
    vectors = table.vectors if rows is None else table.vectors[rows]
    found = exact_top_k(queries, vectors, k)
    if rows is None:
        return found
    return [[(int(rows[pos]), score) for pos, score in hits] for hits in found]


def structure_search(
    table: ItemTable, searcher: Searcher, queries: np.ndarray, k: int, allowed: np.ndarray | None, refine: int
) -> list[list[tuple[int, float]]]:
    """One structure search for every query (restricted to ``allowed`` labels by an ID selector); with
    ``refine`` > 1 (ivfpq) k * refine candidates are re-scored with the exact vectors; a filtered query
    that comes back short of min(k, matching) is answered by exact search over the matching rows."""
    n = len(table)
    want = k if allowed is None else min(k, int(allowed.size))
    scores, labels = searcher.search(queries, min(n, k * refine), allowed)
    rows = table.rows_of_labels(labels)
    if refine > 1:
        scores = np.einsum("qd,qkd->qk", queries, table.vectors[np.where(rows >= 0, rows, 0)])
    results, short = [], []
    for i in range(queries.shape[0]):
        cand = np.flatnonzero(rows[i] >= 0)
        cand = cand[np.argsort(-scores[i, cand], kind="stable")][:want]
        results.append([(int(rows[i, c]), float(scores[i, c])) for c in cand])
        if allowed is not None and len(cand) < want:
            short.append(i)
    if short and allowed is not None:
        exact = exact_rows(table, queries[short], k, table.rows_of_labels(allowed))
        for i, hits in zip(short, exact, strict=True):
            results[i] = hits
    return results
