"""FAISS factory strings as gallery indexes, on real FAISS: training, labels, removal, filters, the tuned
operating point, save / load, and `cdd-index build --factory`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from serving.index import GalleryIndex
from serving.index.__main__ import main as cdd_index
from serving.index.errors import GalleryIndexError
from serving.index.faiss_factory import named_type_factory, search_knob
from serving.index.operating_point import exact_neighbours, tune_operating_point
from serving.index.recall import recall_at_k

DIM, N = 32, 1200


def _clustered(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((48, DIM))
    points = centres[rng.integers(0, 48, N)] + 0.35 * rng.standard_normal((N, DIM))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return _clustered()


def _gallery(spec: str, vectors: np.ndarray) -> GalleryIndex:
    index = GalleryIndex(DIM, "factory", options={"factory": spec})
    ids = [f"item{i}" for i in range(N)]
    index.add(ids, vectors, [{"half": str(i % 2)} for i in range(N)])
    index.settle()  # trains the structures that need it
    return index


@pytest.mark.parametrize(
    ("spec", "knob"),
    [("IVF16,PQ8x4fs", "nprobe"), ("OPQ8,IVF16,PQ8", "nprobe"), ("HNSW16", "ef_search"), ("PQ8x4", None),
     ("IVF16,SQ8,RFlat", "nprobe")],
)
def test_factory_gallery_searches_removes_filters_and_reloads(
    spec: str, knob: str | None, vectors: np.ndarray, tmp_path: Path
) -> None:
    index = _gallery(spec, vectors)
    stats = index.stats()
    assert stats["trained"] is True and stats["search"]["factory"] == spec
    assert index.search_knob() == knob
    ids = [f"item{i}" for i in range(N)]
    queries = vectors[:40]
    truth = exact_neighbours(queries, vectors, ids, 10)
    if knob is not None:
        point = tune_operating_point("factory", index.search, index.set_operating_point, queries, truth,
                                     upper=stats["search"].get("nlist"), parameter=knob)
        assert point.parameter == knob and point.reached, point.tried
        assert index.stats()["search"][knob] == point.value
    found = index.search(queries, 10)
    recall = recall_at_k(found, truth)
    assert recall >= 0.9  # lossy codes are re-ranked with the exact vectors
    assert index.remove(["item0", "item1"]) == 2
    found = {h.id for hits in index.search(vectors[:2], 10) for h in hits}
    assert "item0" not in found and "item1" not in found and len(found) > 0
    odd = index.search(queries, 5, filter={"half": "1"})
    assert all(h.metadata["half"] == "1" for hits in odd for h in hits) and all(len(hits) == 5 for hits in odd)
    index.save(tmp_path / "saved")
    loaded = GalleryIndex.load(tmp_path / "saved")
    assert loaded.stats()["search"]["factory"] == spec and len(loaded) == N - 2
    ranked = [[h.id for h in r] for r in index.search(queries, 5)]
    assert [[h.id for h in r] for r in loaded.search(queries, 5)] == ranked
    if knob is not None:
        assert loaded.stats()["search"][knob] == index.stats()["search"][knob]


def test_a_factory_string_faiss_refuses_is_named(vectors: np.ndarray) -> None:
    with pytest.raises(GalleryIndexError, match=r"--factory 'IVF16,Bogus9': FAISS refuses it for dim 32"):
        GalleryIndex(DIM, "factory", options={"factory": "IVF16,Bogus9"})
    with pytest.raises(GalleryIndexError, match="option 'factory' goes with index_type 'factory'"):
        GalleryIndex(DIM, "flat", options={"factory": "Flat"})
    index = GalleryIndex(DIM, "factory", options={"factory": "IVF512,Flat"})
    index.add([f"i{i}" for i in range(300)], vectors[:300])
    with pytest.raises(ValueError, match="512 inverted lists need at least as many gallery vectors"):
        index.rebuild()
    assert len(index.search(vectors[:1], 3)[0]) == 3  # still answers (exactly) while untrained


def test_named_types_are_factory_strings(vectors: np.ndarray) -> None:
    assert named_type_factory("ivfpq", {"nlist": 64, "pq_m": 8, "pq_nbits": 4}) == "IVF64,PQ8x4"
    assert named_type_factory("hnsw", {}) == "HNSW32" and named_type_factory("flat", {}) == "Flat"
    for index_type, knob in (("ivf", "nprobe"), ("hnsw", "ef_search")):
        index = GalleryIndex(DIM, index_type)
        index.add([f"i{i}" for i in range(N)], vectors)
        index.settle()
        spec = index.stats()["search"]["factory"]
        same = _gallery(spec, vectors)
        assert same.search_knob() == knob
        assert same.stats()["search"].get("nlist") == index.stats()["search"].get("nlist")
        import faiss

        assert search_knob(faiss.index_factory(DIM, spec, faiss.METRIC_INNER_PRODUCT)) == knob


def test_cdd_index_build_with_a_factory_string(
    tiny_bundle: Path, gallery_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "index"
    argv = ["build", "--bundle", str(tiny_bundle), "--images", str(gallery_images), "--out", str(out), "--quiet"]
    assert cdd_index([*argv, "--factory", "HNSW8"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["operating_point"]["parameter"] == "ef_search" and report["operating_point"]["reached"]
    info = GalleryIndex.read_info(out)
    assert info["index_type"] == "factory" and info["options"]["factory"] == "HNSW8"
    loaded = GalleryIndex.load(out)
    assert loaded.search_knob() == "ef_search" and loaded.stats()["search"]["ef_search"] == info["options"]["ef_search"]
    assert cdd_index([*argv, "--factory", "IVF8,Nonsense"]) == 2
    assert "FAISS refuses it for dim 16" in capsys.readouterr().err
    assert cdd_index([*argv, "--factory", "HNSW8", "--index-type", "ivf"]) == 2
    assert "--factory replaces --index-type" in capsys.readouterr().err
