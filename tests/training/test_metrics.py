"""Known-answer tests for retrieval metrics (mAP, CMC) and the re-ID evaluation protocol."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from training.metrics import RetrievalMetrics, evaluate_from_similarity, evaluate_retrieval


def _at_angles(degrees: list[float], norms: list[float] | None = None) -> np.ndarray:
    """2-D features at the given angles (cosine similarity to angle 0 falls as the angle grows)."""
    radians = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    scale = np.ones(len(degrees)) if norms is None else np.asarray(norms)
    return (np.stack([np.cos(radians), np.sin(radians)], axis=1) * scale[:, None]).astype(np.float32)


# Gallery of the hand-computed example (angle to the query, id, camera):
#   g0: 10 deg, id 1, cam 1 | g1: 20 deg, id 2, cam 1 | g2: 30 deg, id 1, cam 2
#   g3: 40 deg, id 3, cam 0 | g4:  5 deg, id 1, cam 0
GALLERY = _at_angles([10, 20, 30, 40, 5], norms=[2.0, 0.5, 3.0, 1.0, 7.0])  # norms must not matter
GALLERY_IDS = [1, 2, 1, 3, 1]
GALLERY_CAMS = [1, 1, 2, 0, 0]


def test_hand_computed_reid_example() -> None:
    queries = _at_angles([0, 0, 0, 0])
    query_ids = [1, 2, 3, 9]
    query_cams = [0, 0, 0, 0]
    # q0 (id 1, cam 0): g4 removed (same id, same cam). Ranking g0 (match), g1, g2 (match), g3.
    #     AP = (1/1 + 2/3) / 2 = 0.8333; first match at rank 1.
    # q1 (id 2, cam 0): nothing removed. Ranking g4, g0, g1 (match), g2, g3. AP = (1/3) / 1; rank 3.
    # q2 (id 3, cam 0): its only match g3 has the same camera -> removed -> query skipped.
    # q3 (id 9): matches nothing in the gallery -> skipped.
    # mAP = (0.8333 + 0.3333) / 2 = 0.5833; rank-1 = 1/2; rank-5 = rank-10 = 2/2.
    metrics = evaluate_retrieval(queries, GALLERY, query_ids, GALLERY_IDS, query_cams, GALLERY_CAMS)
    assert metrics.mAP == pytest.approx((1.0 + 2.0 / 3.0) / 2.0 / 2.0 + (1.0 / 3.0) / 2.0)
    assert metrics.mAP == pytest.approx(0.583333, abs=1e-6)
    assert (metrics.rank1, metrics.rank5, metrics.rank10) == (0.5, 1.0, 1.0)
    assert (metrics.num_queries, metrics.num_valid_queries) == (4, 2)
    assert dict(metrics.cmc)[1] == 0.5


def test_same_id_same_camera_removal_changes_the_answer() -> None:
    queries = _at_angles([0])
    # With cameras, g4 (id 1, cam 0) is removed; without cameras, it is the top match:
    # ranking g4 (match), g0 (match), g1, g2 (match), g3 -> AP = (1 + 1 + 3/4) / 3
    with_cams = evaluate_retrieval(queries, GALLERY, [1], GALLERY_IDS, [0], GALLERY_CAMS)
    without = evaluate_retrieval(queries, GALLERY, [1], GALLERY_IDS)
    assert with_cams.mAP == pytest.approx((1.0 + 2.0 / 3.0) / 2.0)
    assert without.mAP == pytest.approx((1.0 + 1.0 + 3.0 / 4.0) / 3.0)
    # same id but a different camera is kept: query cam 1 removes g0 instead
    # ranking g4 (match), g1, g2 (match), g3 -> AP = (1 + 2/3) / 2
    other_cam = evaluate_retrieval(queries, GALLERY, [1], GALLERY_IDS, [1], GALLERY_CAMS)
    assert other_cam.mAP == pytest.approx((1.0 + 2.0 / 3.0) / 2.0)


def test_distractor_ranked_above_matches_lowers_ap() -> None:
    # Add a distractor (id 0, matches no query) at 1 degree: it takes rank 1.
    # q0 ranking: d, g0 (match), g1, g2 (match), g3 -> AP = (1/2 + 2/4) / 2 = 0.5, rank-1 miss
    gallery = np.concatenate([GALLERY, _at_angles([1])])
    ids = [*GALLERY_IDS, 0]
    cams = [*GALLERY_CAMS, 5]
    metrics = evaluate_retrieval(_at_angles([0]), gallery, [1], ids, [0], cams)
    assert metrics.mAP == pytest.approx(0.5)
    assert metrics.rank1 == 0.0 and metrics.rank5 == 1.0


def test_ties_are_broken_by_gallery_order() -> None:
    # Axis-aligned features: similarities are exactly 1 or 0, so g0, g1, g3 tie at 1.
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    gallery = np.array([[1, 0], [1, 0], [0, 1], [2, 0]], dtype=np.float32)
    # ids g0 = 2, g1 = 1 (match), g2 = 1 (match, sim 0), g3 = 3
    # stable ranking: g0, g1, g3 (ties, gallery order), then g2 -> matches at ranks 2 and 4
    # AP = (1/2 + 2/4) / 2 = 0.5; rank-1 miss
    metrics = evaluate_retrieval(query, gallery, [1], [2, 1, 1, 3])
    assert metrics.mAP == pytest.approx(0.5)
    assert metrics.rank1 == 0.0
    # swapping the ids of g0 and g1 puts the match first among the ties: AP = (1 + 2/4) / 2 = 0.75
    swapped = evaluate_retrieval(query, gallery, [1], [1, 2, 1, 3])
    assert swapped.mAP == pytest.approx(0.75)
    assert swapped.rank1 == 1.0


def test_class_protocol_removes_only_the_query_itself() -> None:
    feats = _at_angles([0, 10, 20])
    ids = [1, 2, 1]
    # item 0 (id 1): others ranked item 1 (id 2), item 2 (id 1) -> AP = 1/2, rank-1 miss
    # item 1 (id 2): no other item with id 2 -> skipped
    # item 2 (id 1): item 1 (10 deg away), item 0 (20 deg away, match) -> AP = 1/2
    # (if the query were not removed, item 0 would get AP (1 + 2/3) / 2 and item 1 would be valid)
    metrics = evaluate_retrieval(feats, feats, ids, ids, query_is_gallery=True)
    assert metrics.mAP == pytest.approx(0.5)
    assert (metrics.rank1, metrics.rank5) == (0.0, 1.0)
    assert (metrics.num_queries, metrics.num_valid_queries) == (3, 2)


def test_no_valid_query_raises() -> None:
    with pytest.raises(ValueError, match="none of the 2 queries has a true match"):
        evaluate_retrieval(_at_angles([0, 5]), GALLERY, [7, 8], GALLERY_IDS)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"query_feats": np.zeros((2, 3), np.float32)}, "query_feats dim 3 != gallery_feats dim 2"),
        ({"query_feats": np.zeros(2, np.float32)}, "query_feats must be 2-D"),
        ({"query_ids": [1, 2, 3]}, "query_ids must be 1-D with 2 entries"),
        ({"gallery_ids": [1, 2]}, "gallery_ids must be 1-D with 5 entries"),
        ({"query_cams": [0, 0]}, "both query_cams and gallery_cams"),
        ({"query_is_gallery": True}, "query_is_gallery=True needs"),
        ({"chunk_size": 0}, "chunk_size must be a positive integer"),
        ({"topk": (0,)}, "topk values must be positive"),
        ({"query_feats": np.full((2, 2), np.nan, np.float32)}, "query_feats contains NaN"),
    ],
)
def test_bad_input_raises_clear_errors(kwargs: dict, message: str) -> None:
    args = {
        "query_feats": _at_angles([0, 0]),
        "gallery_feats": GALLERY,
        "query_ids": [1, 2],
        "gallery_ids": GALLERY_IDS,
    } | kwargs
    with pytest.raises(ValueError, match=message):
        evaluate_retrieval(**args)


def _separated_problem(seed: int, num_queries: int, num_gallery: int, dim: int):
    """Random features, ids and cameras whose similarities have no near-ties (checked, not assumed),
    so float32 rounding in any BLAS kernel cannot change a ranking."""
    rng = np.random.default_rng(seed)
    queries = rng.standard_normal((num_queries, dim)).astype(np.float32)
    gallery = rng.standard_normal((num_gallery, dim)).astype(np.float32)
    qn = queries.astype(np.float64) / np.linalg.norm(queries, axis=1, keepdims=True)
    gn = gallery.astype(np.float64) / np.linalg.norm(gallery, axis=1, keepdims=True)
    similarity = qn @ gn.T
    assert np.diff(np.sort(similarity, axis=1), axis=1).min() > 1e-5, "seed gives near-ties; pick another"
    labels = (rng.integers(0, 8, num_queries), rng.integers(0, 6, num_gallery))  # ids 6, 7: no match
    cams = (rng.integers(0, 3, num_queries), rng.integers(0, 3, num_gallery))
    return queries, gallery, labels, cams, similarity


def _naive_reference(similarity, qids, gids, qcams, gcams):
    """Textbook per-query loop on the full matrix: remove junk, rank, accumulate precision."""
    aps, first = [], []
    for q in range(similarity.shape[0]):
        keep = ~((gids == qids[q]) & (gcams == qcams[q]))
        order = np.argsort(-similarity[q][keep], kind="stable")
        hits = (gids[keep] == qids[q])[order]
        if not hits.any():
            continue
        precisions = [hits[: k + 1].sum() / (k + 1) for k in range(len(hits)) if hits[k]]
        aps.append(sum(precisions) / hits.sum())
        first.append(int(np.argmax(hits)) + 1)
    first_rank = np.array(first)
    return float(np.mean(aps)), [float((first_rank <= k).mean()) for k in (1, 5, 10)], len(aps)


def test_random_data_matches_naive_full_matrix_reference() -> None:
    queries, gallery, (qids, gids), (qcams, gcams), similarity = _separated_problem(0, 25, 40, 16)
    expected_map, expected_ranks, expected_valid = _naive_reference(similarity, qids, gids, qcams, gcams)
    got = evaluate_retrieval(queries, gallery, qids, gids, qcams, gcams, chunk_size=7)
    assert got.mAP == pytest.approx(expected_map, abs=1e-12)
    assert [got.rank1, got.rank5, got.rank10] == pytest.approx(expected_ranks, abs=1e-12)
    assert got.num_valid_queries == expected_valid
    assert 0 < expected_valid < 25  # the data exercises both valid and skipped queries
    from_matrix = evaluate_from_similarity(similarity, qids, gids, qcams, gcams, chunk_size=4)
    assert from_matrix == got


def test_chunk_size_does_not_change_results() -> None:
    queries, gallery, (qids, gids), (qcams, gcams), _ = _separated_problem(1, 30, 60, 8)
    progress: list[tuple[int, int]] = []
    results = [
        evaluate_retrieval(queries, gallery, qids, gids, qcams, gcams, chunk_size=c, topk=(1, 3))
        for c in (1, 4, 1000)
    ]
    assert results[0] == results[1] == results[2]
    # exact ties (one-hot features) and the class protocol, chunked vs not
    rng = np.random.default_rng(2)
    feats = np.eye(5, dtype=np.float32)[rng.integers(0, 5, 40)]
    ids = rng.integers(0, 4, 40)
    tied = [
        evaluate_retrieval(feats, feats, ids, ids, query_is_gallery=True, chunk_size=c, on_chunk=cb)
        for c, cb in ((3, lambda done, total: progress.append((done, total))), (64, None))
    ]
    assert tied[0] == tied[1]
    assert progress[-1] == (40, 40) and len(progress) == 14  # ceil(40 / 3) callbacks


def test_memory_stays_bounded_by_the_chunk() -> None:
    rng = np.random.default_rng(3)
    num_queries, num_gallery, chunk = 256, 50_000, 2
    queries = rng.standard_normal((num_queries, 16)).astype(np.float32)
    gallery = rng.standard_normal((num_gallery, 16)).astype(np.float32)
    qids = rng.integers(0, 500, num_queries)
    gids = rng.integers(0, 500, num_gallery)
    cams = (rng.integers(0, 6, num_queries), rng.integers(0, 6, num_gallery))
    full_matrix_bytes = num_queries * num_gallery * 4
    tracemalloc.start()
    try:
        metrics = evaluate_retrieval(queries, gallery, qids, gids, *cams, chunk_size=chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert metrics.num_valid_queries > 200
    # per chunk: ~20 bytes x 2 x 50,000 = 2 MB, against 51 MB for the full float32 matrix
    assert peak < full_matrix_bytes / 10, (
        f"peak {peak / 1e6:.1f} MB vs full matrix {full_matrix_bytes / 1e6:.1f} MB"
    )


def test_as_percent() -> None:
    metrics = RetrievalMetrics(0.5, 0.25, 0.75, 1.0, 10, 8, cmc=((1, 0.25), (3, 0.5), (5, 0.75), (10, 1.0)))
    assert metrics.as_percent() == {
        "mAP": 50.0,
        "rank1": 25.0,
        "rank3": 50.0,
        "rank5": 75.0,
        "rank10": 100.0,
        "num_queries": 10,
        "num_valid_queries": 8,
    }


def test_fast_stable_order_equals_stable_argsort() -> None:
    from training.metrics import _stable_descending_order

    rng = np.random.default_rng(4)
    # many exact ties, both zeros, negatives, tiny and huge magnitudes
    values = rng.integers(-4, 5, (6, 300)).astype(np.float32) / 4
    values[0, :4] = [-0.0, 0.0, 1e-38, -1e-38]
    values[1, :3] = [3e38, -3e38, 1e-45]
    expected = np.argsort(-values, axis=1, kind="stable")
    assert np.array_equal(_stable_descending_order(values), expected)
    continuous = rng.standard_normal((3, 1000)).astype(np.float32)
    assert np.array_equal(
        _stable_descending_order(continuous), np.argsort(-continuous, axis=1, kind="stable")
    )


def test_metrics_module_does_not_import_torch() -> None:
    # serving imports this module lazily and must not pull in torch
    repo_root = Path(__file__).resolve().parents[2]
    code = "import sys, training.metrics; sys.exit('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr or "training.metrics imported torch"
