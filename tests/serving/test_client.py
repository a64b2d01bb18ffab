"""RetrievalClient and `cdd-search` against a real server on a loopback port 0 (token auth on)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from serving import client as client_module
from serving.backends import Engine, create_engine
from serving.batcher import DynamicBatcher
from serving.bundle import Manifest
from serving.client import RetrievalClient
from serving.index.build import build_index, items_from_folder
from serving.server import create_server
from serving.service import RetrievalService, ServiceLimits

TOKEN = "client-test-token"
QUERY = "0002_c2s1_000002_00.jpg"


@pytest.fixture(scope="module")
def target(tiny_bundle: Path, tiny_manifest: Manifest, gallery_images: Path) -> Iterator[str]:
    engine: Engine = create_engine(tiny_bundle, tiny_manifest, backend="onnxruntime-cpu")
    index, _ = build_index(engine, tiny_manifest, items_from_folder(gallery_images), progress=False)
    batcher = DynamicBatcher(engine.embed, max_batch=8, max_wait_ms=2)
    service = RetrievalService(engine, index, tiny_manifest, ServiceLimits(max_k=10), batcher)
    server, port = create_server(service, port=0, auth_token=TOKEN)
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)
    service.close()


@pytest.fixture
def client(target: str) -> Iterator[RetrievalClient]:
    with RetrievalClient(target, token=TOKEN, timeout=10) as c:
        yield c


def test_search_embed_and_batch(client: RetrievalClient, gallery_images: Path) -> None:
    path = gallery_images / QUERY
    hits = client.search(path, k=3)
    assert hits[0].id == QUERY
    assert hits[0].metadata == {"path": QUERY, "file": QUERY, "label": "2", "camera": "1"}
    assert client.search(path.read_bytes(), k=3) == hits
    assert client.search(path, k=5, filters={"label": "2"})[-1].metadata["label"] == "2"
    vector = client.embed(path)
    assert vector.shape == (16,) and abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5
    batch = client.search_batch([path, gallery_images / "0005_c1s1_000001_00.jpg"], k=2)
    assert [r[0].id for r in batch] == [QUERY, "0005_c1s1_000001_00.jpg"]


def test_gallery_management_stats_and_health(client: RetrievalClient, gallery_images: Path) -> None:
    before = client.stats()["batching"]
    vector = client.embed(gallery_images / QUERY)
    assert client.add_items([{"id": "copy", "vector": vector, "metadata": {"label": "dup"}}]) == 1
    assert client.add_items([{"id": "img", "image": gallery_images / QUERY}]) == 1
    assert {h.id for h in client.search(gallery_images / QUERY, k=3)} == {"copy", "img", QUERY}
    stats = client.stats()
    assert stats["count"] == 22 and stats["dim"] == 16 and stats["bundle_name"] == "tiny"
    batching = stats["batching"]
    assert batching["max_batch"] == 8
    # three one-image calls, one after another (embed, add by image, search): three batches of one
    assert (batching["images"] - before["images"], batching["batches"] - before["batches"]) == (3, 3)
    assert batching["mean_batch_size"] == pytest.approx(batching["images"] / batching["batches"])
    assert 1.0 <= batching["mean_batch_size"] <= batching["largest_batch"] <= 8
    assert client.remove_items(["copy", "img"]) == 2 and client.stats()["count"] == 20
    assert client.health() == "SERVING" and client.health("cdd.v1.Retrieval") == "SERVING"


def test_errors_carry_the_server_status(client: RetrievalClient, target: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        client.remove_items(["missing-id"])
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND and "missing-id" in caught.value.details()
    with RetrievalClient(target, token="wrong") as bad:
        with pytest.raises(grpc.RpcError) as caught:
            bad.stats()
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert bad.health() == "SERVING"


def test_cdd_search_prints_a_ranked_table(
    target: str, gallery_images: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CDD_SERVE_TOKEN", TOKEN)
    first, second = gallery_images / QUERY, gallery_images / "0004_c1s1_000001_00.jpg"
    assert client_module.main(["--target", target, str(first), str(second), "-k", "3"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 6 and [r[0] for r in rows] == ["1", "2", "3"] * 2
    assert rows[0][1] == QUERY and rows[0][3] == "2" and rows[0][4] == QUERY
    assert rows[3][1] == second.name and float(rows[3][2]) > 0.999
    assert f"query: {first}" in out and "rank" in out


def test_cdd_search_failures(
    target: str, gallery_images: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CDD_SERVE_TOKEN", raising=False)
    image = str(gallery_images / QUERY)
    assert client_module.main(["--target", target, image]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    monkeypatch.setenv("CDD_SERVE_TOKEN", TOKEN)
    assert client_module.main(["--target", target, image, "-k", "0"]) == 1
    assert "INVALID_ARGUMENT" in capsys.readouterr().err
    assert client_module.main(["--target", target, str(gallery_images / "missing.jpg")]) == 2
    assert "cannot read the image" in capsys.readouterr().err
    assert client_module.main(["--target", target, image, "--filter", "novalue"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
