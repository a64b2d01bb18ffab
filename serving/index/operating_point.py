"""Operating points of approximate indexes: the smallest ``nprobe`` (ivf / ivfpq) or ``ef_search`` (hnsw)
whose recall@k against exact search reaches a target (0.95 by default), measured on the gallery itself.

`cdd-index build` tunes every approximate index this way and stores the value in the index manifest, so
`cdd-serve` searches at the measured operating point instead of a library default; the index benchmark
reports each type at its tuned point.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.index.exact_search import exact_top_k
from serving.index.recall import recall_at_k

__all__ = ["PARAMETER", "TARGET_RECALL", "OperatingPoint", "exact_neighbours", "tune_operating_point"]

TARGET_RECALL = 0.95
"""recall@k an approximate index must reach at its operating point."""
PARAMETER = {"ivf": "nprobe", "ivfpq": "nprobe", "hnsw": "ef_search"}
"""The search-time parameter tuned per approximate index type."""
_CANDIDATES = {
    "nprobe": (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
    "ef_search": (16, 32, 64, 128, 256, 512, 1024, 2048),
}


@dataclass(frozen=True)
class OperatingPoint:
    """The chosen ``parameter`` = ``value`` and the recall@``k`` measured there (``reached`` the target?);
    ``tried`` lists (value, recall) in the order measured."""

    parameter: str
    value: int
    recall: float
    k: int
    reached: bool
    tried: tuple[tuple[int, float], ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "parameter": self.parameter,
            "value": self.value,
            "recall_at_k": round(self.recall, 4),
            "k": self.k,
            "target": TARGET_RECALL,
            "reached": self.reached,
            "tried": [[v, round(r, 4)] for v, r in self.tried],
        }


def exact_neighbours(queries: np.ndarray, vectors: np.ndarray, ids: list[str],
                     k: int) -> list[list[tuple[str, float]]]:
    """The exact top-``k`` ``(id, score)`` per query, best first (inner product over all ``vectors``): the
    ground truth of `serving.index.recall.recall_at_k`."""
    return [[(ids[row], score) for row, score in hits] for hits in exact_top_k(queries, vectors, k)]


def tune_operating_point(
    index_type: str,
    search: Callable[[np.ndarray, int], list[list[Any]]],
    set_parameter: Callable[[str, int], None],
    queries: np.ndarray,
    truth: list[list[tuple[str, float]]],
    *,
    k: int = 10,
    target: float = TARGET_RECALL,
    upper: int | None = None,
    parameter: str | None = None,
) -> OperatingPoint:
    """Try increasing values of the type's parameter (``set_parameter(name, value)``, then ``search``
    returning hits with ``.id`` and ``.score``) until `recall_at_k` of ``queries`` against ``truth``
    (`exact_neighbours`) reaches ``target``; the
    parameter is left at the chosen value (the largest tried when none reaches it). ``upper`` caps the
    values (nlist for nprobe). ``parameter`` names the knob when ``index_type`` is not in PARAMETER (a
    FAISS factory string's nprobe or ef_search)."""
    name = parameter or PARAMETER[index_type]
    values = [v for v in _CANDIDATES[name] if upper is None or v <= upper] or [_CANDIDATES[name][0]]
    if upper is not None and values[-1] < upper:
        values.append(upper)
    tried: list[tuple[int, float]] = []
    for value in values:
        set_parameter(name, value)
        recall = recall_at_k(search(queries, k), truth)
        tried.append((value, recall))
        if recall >= target:
            return OperatingPoint(name, value, recall, k, True, tuple(tried))
    value, recall = tried[-1]
    return OperatingPoint(name, value, recall, k, False, tuple(tried))
