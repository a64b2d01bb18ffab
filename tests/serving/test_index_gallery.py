"""GalleryIndex: exact results vs brute force, errors, filters, persistence, crash safety, recall."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from serving.index import (
    DimensionError,
    DuplicateIdError,
    GalleryIndex,
    GalleryIndexError,
    IndexBundleMismatch,
    IndexCorruptError,
    InvalidVectorsError,
    UnknownIdError,
    recall_at_k_vs_exact,
)
from serving.index.atomic_dir import resolve

DIM = 16


@pytest.fixture(autouse=True, scope="module")
def _one_faiss_thread():
    """FAISS's OpenMP threads spin-wait when the CPU is shared; one thread keeps these tiny cases fast."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _random(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    return _unit(np.random.default_rng(seed).normal(size=(n, dim)))


def _clustered(n_clusters: int, per_cluster: int, dim: int, seed: int) -> np.ndarray:
    """Known structure: points scattered tightly around random unit centres."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.normal(size=(n_clusters, dim)))
    points = np.repeat(centres, per_cluster, axis=0) + rng.normal(
        scale=0.15 / np.sqrt(dim), size=(n_clusters * per_cluster, dim)
    )
    return _unit(points)


def _filled(
    n: int = 300, index_type: str = "flat", seed: int = 0, **kwargs
) -> tuple[GalleryIndex, np.ndarray]:
    vectors = _random(n, seed)
    index = GalleryIndex(DIM, index_type, **kwargs)
    index.add(
        [f"item{i}" for i in range(n)], vectors, [{"camera": i % 4, "file": f"{i}.jpg"} for i in range(n)]
    )
    return index, vectors


def _brute_force(vectors: np.ndarray, ids: list[str], queries: np.ndarray, k: int) -> list[list[str]]:
    sims = queries @ vectors.T
    return [[ids[j] for j in np.argsort(-row)[:k]] for row in sims]


def test_exact_search_equals_brute_force():
    index, vectors = _filled()
    queries = _random(12, seed=1)
    hits = index.search(queries, k=7)
    expected = _brute_force(vectors, [f"item{i}" for i in range(len(vectors))], queries, 7)
    assert [[h.id for h in row] for row in hits] == expected
    for row, query in zip(hits, queries, strict=True):
        scores = [h.score for h in row]
        assert scores == sorted(scores, reverse=True)
        stored = {h.id: vectors[int(h.id[4:])] for h in row}
        np.testing.assert_allclose(scores, [float(query @ stored[h.id]) for h in row], atol=1e-5)
    assert index.search(queries, k=1000)[0].__len__() == len(vectors)


def test_add_errors_leave_the_index_unchanged():
    index, vectors = _filled(10)
    with pytest.raises(DuplicateIdError, match="item3"):
        index.add(["new", "item3"], vectors[:2])
    with pytest.raises(DuplicateIdError, match="repeat within one add"):
        index.add(["a", "a"], vectors[:2])
    with pytest.raises(DimensionError, match=r"shape \(N, 16\), found \(2, 8\)"):
        index.add(["a", "b"], vectors[:2, :8])
    with pytest.raises(InvalidVectorsError, match="L2-normalised"):
        index.add(["a", "b"], vectors[:2] * 2)
    with pytest.raises(InvalidVectorsError, match="2 id"):
        index.add(["a", "b"], vectors[:3])
    with pytest.raises(GalleryIndexError, match="not JSON-serialisable"):
        index.add(["a"], vectors[:1], [{"when": object()}])
    with pytest.raises(DimensionError, match="reshape"):
        index.search(vectors[0], 3)
    with pytest.raises(GalleryIndexError, match="k must be a positive integer, found 0"):
        index.search(vectors[:1], 0)
    assert len(index.search(vectors[:1], np.int64(2))[0]) == 2
    assert len(index) == 10 and "new" not in index and "a" not in index


def test_remove_and_unknown_ids():
    index, vectors = _filled(50)
    with pytest.raises(UnknownIdError, match="ghost"):
        index.remove(["item1", "ghost"])
    assert len(index) == 50 and "item1" in index
    assert index.remove(["item1", "item2", "item1"]) == 2
    assert len(index) == 48 and "item1" not in index
    remaining = [f"item{i}" for i in range(50) if i not in (1, 2)]
    rows = [int(i[4:]) for i in remaining]
    hits = index.search(vectors[[1, 5]], k=5)
    assert [[h.id for h in row] for row in hits] == _brute_force(vectors[rows], remaining, vectors[[1, 5]], 5)
    vector, meta = index.get("item5")
    np.testing.assert_array_equal(vector, vectors[5])
    assert meta == {"camera": 1, "file": "5.jpg"}


@pytest.mark.parametrize("camera_share", ["quarter", "one item"])
def test_filter_is_applied_before_the_top_k_cut(camera_share):
    index, vectors = _filled(400)
    if camera_share == "one item":
        index.add(["special"], _random(1, seed=9), [{"camera": 7}])
        vectors = np.concatenate([vectors, _random(1, seed=9)])
    camera = 2 if camera_share == "quarter" else 7
    ids = [f"item{i}" for i in range(400)] + (["special"] if camera_share == "one item" else [])
    keep = [i for i, item in enumerate(ids) if (i % 4 if item != "special" else 7) == camera]
    # Queries equal to camera-0 items: their true top hits are filtered out.
    queries = vectors[[0, 4, 8]]
    hits = index.search(queries, k=5, filter={"camera": camera})
    expected = _brute_force(vectors[keep], [ids[i] for i in keep], queries, 5)
    assert [[h.id for h in row] for row in hits] == expected
    assert all(h.metadata["camera"] == camera for row in hits for h in row)
    assert index.search(queries, k=5, filter={"camera": 99}) == [[], [], []]


def test_filters_match_the_text_form_of_metadata_values():
    index = GalleryIndex(DIM)
    meta = [{"camera": 3}, {"camera": "3"}, {"camera": 30}, {"flag": True}, {"tags": [1, 2]}, {}]
    index.add([f"m{i}" for i in range(len(meta))], _random(len(meta), seed=4), meta)
    query = _random(1, seed=5)

    def found(filter):
        return sorted(h.id for h in index.search(query, k=10, filter=filter)[0])

    assert found({"camera": "3"}) == found({"camera": 3}) == ["m0", "m1"]
    assert found({"flag": "true"}) == ["m3"] and found({"flag": "True"}) == []
    assert found({"tags": "[1,2]"}) == ["m4"]
    assert found({"camera": "3", "flag": "true"}) == []


def test_hits_carry_copies_of_metadata():
    index, vectors = _filled(5)
    index.search(vectors[:1], k=1)[0][0].metadata["camera"] = 123
    assert index.get("item0")[1]["camera"] == 0


@pytest.mark.parametrize("index_type", ["flat", "ivf", "ivfpq", "hnsw"])
def test_save_load_round_trip(tmp_path, index_type):
    vectors = _clustered(20, 20, DIM, seed=3)
    index = GalleryIndex(DIM, index_type, bundle_sha256="b" * 64)
    index.add(
        [f"x{i}" for i in range(len(vectors))], vectors, [{"label": i // 20} for i in range(len(vectors))]
    )
    index.remove(["x0", "x1"])
    queries = vectors[[5, 50, 250]]
    index.save(tmp_path / "idx")  # trains ivf / ivfpq (or waits for the background training)
    before = index.search(queries, k=6)
    loaded = GalleryIndex.load(tmp_path / "idx", expected_bundle_sha256="b" * 64)
    assert loaded.search(queries, k=6) == before
    assert len(loaded) == 398 and loaded.stats()["index_type"] == index_type and loaded.stats()["trained"]
    info = GalleryIndex.read_info(tmp_path / "idx")
    assert info["count"] == 398 and info["dim"] == DIM and info["bundle_sha256"] == "b" * 64
    loaded.add(["extra"], vectors[:1], [{"label": -1}])
    loaded.remove(["x2"])
    assert loaded.search(vectors[:1], k=1, exact=True)[0][0].id == "extra"
    assert "extra" in {h.id for h in loaded.search(vectors[:1], k=5)[0]}
    assert "x2" not in {h.id for h in loaded.search(vectors[2:3], k=10)[0]}


def test_crash_during_save_keeps_the_previous_index(tmp_path, monkeypatch):
    index, vectors = _filled(30)
    index.save(tmp_path / "idx")
    index.add(["late"], _random(1, seed=5))

    def crash(*args, **kwargs):
        raise OSError("simulated crash before the switch")

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", crash)
        with pytest.raises(OSError, match="simulated crash"):
            index.save(tmp_path / "idx")
    # A writer killed outright leaves its temp folder and maybe an unreferenced version behind.
    (tmp_path / "idx" / ".tmp-killed").mkdir()
    (tmp_path / "idx" / ".tmp-killed" / "vectors.npy").write_bytes(b"half")
    (tmp_path / "idx" / "v-99999999T999999999999-dead").mkdir()
    old = GalleryIndex.load(tmp_path / "idx")
    assert len(old) == 30 and "late" not in old
    assert not [
        p for p in (tmp_path / "idx").iterdir() if p.name.startswith(".tmp-") and p.name != ".tmp-killed"
    ]
    first = resolve(tmp_path / "idx").name
    index.save(tmp_path / "idx")
    assert len(GalleryIndex.load(tmp_path / "idx")) == 31
    left = sorted(p.name for p in (tmp_path / "idx").iterdir() if p.name not in ("CURRENT", ".lock"))
    assert left == sorted([first, resolve(tmp_path / "idx").name])  # live + previous; leftovers collected


@pytest.mark.parametrize("victim", ["vectors.npy", "items.jsonl", "index.json"])
def test_tampered_files_are_detected(tmp_path, victim):
    index, _ = _filled(20)
    index.save(tmp_path / "idx")
    path = resolve(tmp_path / "idx") / victim
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(IndexCorruptError, match=f"{victim}: sha256 is"):
        GalleryIndex.load(tmp_path / "idx")


def test_index_from_another_bundle_is_refused(tmp_path):
    index, _ = _filled(5, bundle_sha256="a" * 64)
    index.save(tmp_path / "idx")
    with pytest.raises(IndexBundleMismatch, match=f"{'a' * 64}.*{'c' * 64}.*cdd-index build"):
        GalleryIndex.load(tmp_path / "idx", expected_bundle_sha256="c" * 64)
    assert len(GalleryIndex.load(tmp_path / "idx", expected_bundle_sha256="a" * 64)) == 5


def test_save_refuses_a_folder_that_is_not_an_index(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "keep.jpg").write_bytes(b"x")
    index, _ = _filled(3)
    with pytest.raises(IndexCorruptError, match="not a gallery index"):
        index.save(tmp_path / "photos")
    with pytest.raises(IndexCorruptError, match="no gallery index here"):
        GalleryIndex.load(tmp_path / "photos")
    assert (tmp_path / "photos" / "keep.jpg").read_bytes() == b"x"


@pytest.mark.parametrize(("index_type", "minimum"), [("ivf", 0.9), ("hnsw", 0.9), ("ivfpq", 0.9)])
def test_approximate_recall_on_clustered_vectors(index_type, minimum):
    vectors = _clustered(30, 30, 32, seed=7)
    index = GalleryIndex(32, index_type)
    index.add([str(i) for i in range(len(vectors))], vectors, [{"group": i % 3} for i in range(len(vectors))])
    queries = _unit(vectors[::37] + np.random.default_rng(8).normal(scale=0.01, size=vectors[::37].shape))
    assert index.wait_for_maintenance(timeout=60)  # ivf / ivfpq train in the background
    recall = recall_at_k_vs_exact(index, queries, k=10)
    assert index.stats()["trained"] and index.stats()["search"]["engine"] == "faiss-cpu"
    assert recall > minimum, f"{index_type} recall@10 {recall:.3f}"
    filtered = index.search(queries, k=10, filter={"group": 1})
    assert all(len(row) == 10 and all(h.metadata["group"] == 1 for h in row) for row in filtered)


def test_untrained_ivf_searches_exactly():
    index, vectors = _filled(40, index_type="ivf")
    assert not index.stats()["trained"]
    hits = index.search(vectors[:3], k=4)
    assert [[h.id for h in row] for row in hits] == _brute_force(
        vectors, [f"item{i}" for i in range(40)], vectors[:3], 4
    )


def test_hnsw_removal_uses_tombstones_then_compacts():
    index, vectors = _filled(400, index_type="hnsw")
    index.remove([f"item{i}" for i in range(0, 40)])
    assert index.stats()["search"]["tombstones"] == 40
    assert not {h.id for h in index.search(vectors[:40], k=3)[0]} & {f"item{i}" for i in range(40)}
    index.remove([f"item{i}" for i in range(40, 120)])  # past a quarter: rebuilt in the background
    assert index.wait_for_maintenance(timeout=60)
    assert index.stats()["search"]["tombstones"] == 0 and len(index) == 280
    assert index.search(vectors[200:201], k=1)[0][0].id == "item200"


def test_concurrent_add_remove_search():
    index, vectors = _filled(200)
    errors: list[BaseException] = []

    def writer(offset: int) -> None:
        try:
            for i in range(50):
                index.add([f"w{offset}-{i}"], vectors[i : i + 1])
                if i % 2:
                    index.remove([f"w{offset}-{i}"])
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    def reader() -> None:
        try:
            for _ in range(50):
                assert len(index.search(vectors[:4], k=5, filter={"camera": 1})[0]) == 5
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(2)] + [
        threading.Thread(target=reader)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(index) == 250


@pytest.mark.gpu
def test_torch_gpu_flat_matches_cpu():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: torch.cuda.is_available() is False")
    from serving.index.torch_gpu_searcher import TorchExactSearcher

    vectors, queries = _random(500, 0), _random(5, 1)
    searcher = TorchExactSearcher(DIM)
    searcher.add(vectors, np.arange(500, dtype=np.int64))
    searcher.remove(np.arange(0, 500, 2, dtype=np.int64))
    scores, labels = searcher.search(queries, 5)
    odd = np.arange(1, 500, 2)
    sims = queries @ vectors[odd].T
    np.testing.assert_array_equal(labels, odd[np.argsort(-sims, axis=1)[:, :5]])
    np.testing.assert_allclose(scores, -np.sort(-sims, axis=1)[:, :5], atol=1e-5)


def test_faiss_searcher_has_every_member_of_the_searcher_protocol():
    from serving.index.faiss_searcher import FaissSearcher
    from serving.index.searcher import Searcher

    members = {name for name in vars(Searcher) if not name.startswith("_")}
    assert {"search", "add", "remove", "train", "serialize", "describe", "is_trained", "ntotal"} <= members
    searcher = FaissSearcher("flat", DIM, {})
    assert all(hasattr(searcher, name) for name in members)
    vectors = _random(3, seed=1)
    searcher.add(vectors, np.arange(3, dtype=np.int64))
    scores, labels = searcher.search(vectors[:1], 2)
    assert labels[0, 0] == 0 and scores.shape == (1, 2) and searcher.ntotal == 3
