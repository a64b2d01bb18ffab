"""One recall@k (`serving.index.recall.recall_at_k`): cdd-index info --recall, the operating-point tuner and
the index benchmark count a hit that ties the exact k-th score (within 1e-5) as found, and agree."""

from __future__ import annotations

import numpy as np
import pytest

from serving.benchmarks.index import _recall as bench_recall
from serving.index.gallery import GalleryIndex, Hit
from serving.index.operating_point import exact_neighbours, tune_operating_point
from serving.index.recall import TIE_TOLERANCE, recall_at_k, recall_at_k_vs_exact

# the exact top-2 of two queries, and what an approximate index returned for them
TRUTH = [[("a", 0.9), ("b", 0.5)], [("x", 0.8), ("y", 0.7)]]
TIE = [[Hit("a", 0.9), Hit("c", 0.5 - TIE_TOLERANCE / 2)], [Hit("x", 0.8), Hit("y", 0.7)]]  # c ties b
MISS = [[Hit("a", 0.9), Hit("c", 0.5 - 2 * TIE_TOLERANCE)], [Hit("y", 0.7), Hit("z", 0.6)]]


class _Answers:
    """An index whose search returns fixed hits (the benchmark and the tuner call ``search(queries, k)``)."""

    def __init__(self, hits: list[list[Hit]]) -> None:
        self.hits = hits

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        return self.hits


@pytest.mark.parametrize(("hits", "expected"), [(TIE, 1.0), (MISS, 0.5)], ids=["tie", "miss"])
def test_every_caller_counts_ties_the_same(hits: list[list[Hit]], expected: float) -> None:
    queries = np.zeros((2, 4), np.float32)
    assert recall_at_k(hits, TRUTH) == expected
    assert bench_recall(_Answers(hits), queries, TRUTH, 2) == expected
    point = tune_operating_point("ivf", _Answers(hits).search, lambda name, value: None, queries, TRUTH, k=2,
                                 upper=1)
    assert point.tried == ((1, expected),)


def test_empty_truth_counts_as_found_and_no_queries_give_zero() -> None:
    assert recall_at_k([[]], [[]]) == 1.0
    assert recall_at_k([], []) == 0.0


def test_the_tuners_truth_is_the_exact_search_of_the_index() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(60, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"v{i}" for i in range(60)]
    index = GalleryIndex(8, "flat")
    index.add(ids, vectors)
    queries = vectors[:5]
    truth = exact_neighbours(queries, vectors, ids, 4)
    exact = index.search(queries, 4, exact=True)
    assert [[item for item, _ in row] for row in truth] == [[hit.id for hit in row] for row in exact]
    assert np.allclose([[s for _, s in row] for row in truth], [[hit.score for hit in row] for row in exact],
                       atol=1e-6)
    assert recall_at_k_vs_exact(index, queries, 4) == recall_at_k(index.search(queries, 4), truth) == 1.0
