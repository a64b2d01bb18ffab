"""Operating points: the smallest nprobe / ef_search reaching recall@10 >= 0.95 on the gallery itself,
stored in the index manifest by `cdd-index build` and used again after a load; cdd-index writers are
refused on a folder a running server owns."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from serving.index import GalleryIndex
from serving.index.__main__ import main as cdd_index
from serving.index.operating_point import TARGET_RECALL, exact_neighbours, tune_operating_point
from serving.index.recall import recall_at_k
from tests.serving.server_process import ServerProcess


def _clustered(n_clusters: int, per: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim))
    rows = np.repeat(centres, per, axis=0) + rng.normal(scale=0.6, size=(n_clusters * per, dim))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("index_type", ["ivf", "hnsw"])
def test_the_smallest_parameter_reaching_the_target_is_chosen_and_saved(index_type: str, tmp_path: Path) -> None:
    vectors = _clustered(40, 50, 32, seed=1)
    ids = [f"v{i}" for i in range(len(vectors))]
    options = {"nlist": 64} if index_type == "ivf" else {"hnsw_m": 4, "ef_construction": 16}
    index = GalleryIndex(32, index_type, options=options)
    index.add(ids, vectors)
    index.settle()
    queries = vectors[::10]
    truth = exact_neighbours(queries, vectors, ids, 10)
    point = tune_operating_point(index_type, index.search, index.set_operating_point, queries, truth, upper=64)
    assert point.reached and point.recall >= TARGET_RECALL
    assert len(point.tried) >= 2 and all(recall < TARGET_RECALL for _, recall in point.tried[:-1])
    index.save(tmp_path / "idx")
    info = json.loads(next((tmp_path / "idx").glob("v-*/index.json")).read_text())
    assert info["options"][point.parameter] == point.value
    loaded = GalleryIndex.load(tmp_path / "idx")
    assert loaded.stats()["search"][point.parameter] == point.value
    found = loaded.search(queries, 10)
    assert len(found) == len(truth) == len(queries) and recall_at_k(found, truth) == pytest.approx(point.recall)


def test_build_reports_and_stores_the_operating_point(
    tiny_bundle: Path, gallery_images: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "index"
    argv = ["build", "--bundle", str(tiny_bundle), "--images", str(gallery_images), "--out", str(out),
            "--index-type", "hnsw", "--quiet"]
    assert cdd_index(argv) == 0
    report = json.loads(capsys.readouterr().out)
    point = report["operating_point"]
    assert point["parameter"] == "ef_search" and point["reached"] and point["recall_at_k"] >= TARGET_RECALL
    assert GalleryIndex.read_info(out)["operating_point"] == point
    assert GalleryIndex.read_info(out)["options"]["ef_search"] == point["value"]


def test_cdd_index_add_is_refused_while_a_server_owns_the_folder(
    tiny_bundle: Path, gallery_images: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "index"
    assert cdd_index(["build", "--bundle", str(tiny_bundle), "--images", str(gallery_images), "--out", str(out),
                      "--quiet"]) == 0
    extra = tmp_path / "extra"
    extra.mkdir()
    shutil.copy(gallery_images / "0001_c1s1_000001_00.jpg", extra / "0009_c1s1_000001_00.jpg")
    add = ["add", "--index", str(out), "--bundle", str(tiny_bundle), "--images", str(extra), "--quiet"]
    server = ServerProcess(tiny_bundle, out)
    try:
        capsys.readouterr()
        code = cdd_index(add)
        err = capsys.readouterr().err
        assert code == 2 and f"index {out} is served by a running process (cdd-serve pid" in err
        assert "AddItems / RemoveItems RPCs" in err
        code = cdd_index(["remove", "--index", str(out), "--ids", "0001_c1s1_000001_00.jpg"])
        err = capsys.readouterr().err
        assert code == 2 and "served by a running process (cdd-serve pid" in err and "RemoveItems" in err
    finally:
        assert server.terminate() == 0
    assert GalleryIndex.read_info(out)["count"] == 20  # nothing was added or removed while served
    assert cdd_index(add) == 0 and GalleryIndex.read_info(out)["count"] == 21
    assert cdd_index(["remove", "--index", str(out), "--ids", "0001_c1s1_000001_00.jpg"]) == 0
