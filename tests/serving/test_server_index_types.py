"""IVF and HNSW galleries through the real gRPC path (not only flat): self-queries find themselves,
filters hold inside the structure search, SearchBatch answers every query with one index search, and the
IVF training that the added items trigger happens in the background, then serves."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from serving._proto import retrieval_pb2 as pb
from serving._proto import retrieval_pb2_grpc as pb_grpc
from serving.backends import create_engine
from serving.batcher import DynamicBatcher
from serving.bundle import Manifest
from serving.index.build import build_index, items_from_folder
from serving.server import create_server
from serving.service import RetrievalService, ServiceLimits

FILLER = 400


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module", params=["ivf", "hnsw"])
def served(request, tiny_bundle: Path, tiny_manifest: Manifest, gallery_images: Path) -> Iterator[tuple]:
    engine = create_engine(tiny_bundle, tiny_manifest, backend="onnxruntime-cpu")
    index, _ = build_index(engine, tiny_manifest, items_from_folder(gallery_images), index_type=request.param,
                           progress=False)
    rng = np.random.default_rng(5)
    filler = rng.normal(size=(FILLER, tiny_manifest.output.dim)).astype(np.float32)
    filler /= np.linalg.norm(filler, axis=1, keepdims=True)
    index.add([f"filler{i}" for i in range(FILLER)], filler, [{"camera": i % 2} for i in range(FILLER)])
    assert index.wait_for_maintenance(timeout=60)  # ivf trains in the background once it has the items
    assert index.stats()["trained"] and index.stats()["search"]["engine"] == "faiss-cpu"
    calls = {"search": 0}
    real_search = index.search

    def counted(*args, **kwargs):
        calls["search"] += 1
        return real_search(*args, **kwargs)

    index.search = counted  # counts calls; every search still runs on the real index
    batcher = DynamicBatcher(engine.embed, max_batch=8, max_wait_ms=2.0)
    service = RetrievalService(engine, index, tiny_manifest, ServiceLimits(max_k=20), batcher)
    server, port = create_server(service, port=0)
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield pb_grpc.RetrievalStub(channel), calls, request.param
    server.stop(None)
    service.close()


def test_each_gallery_image_finds_itself(served, gallery_images: Path) -> None:
    stub, _, _ = served
    files = sorted(gallery_images.glob("*.jpg"))
    found = [stub.Search(pb.SearchRequest(image=p.read_bytes(), k=1), timeout=20).items[0].id for p in files]
    assert found == [p.name for p in files]


def test_filters_hold_inside_the_structure_search(served, gallery_images: Path) -> None:
    stub, _, _ = served
    image = (gallery_images / "0003_c1s1_000001_00.jpg").read_bytes()
    items = stub.Search(pb.SearchRequest(image=image, k=20, filters={"camera": "1"}), timeout=20).items
    assert len(items) == 20 and {item.metadata["camera"] for item in items} == {"1"}
    scores = [item.score for item in items]
    assert scores == sorted(scores, reverse=True)
    labelled = stub.Search(pb.SearchRequest(image=image, k=20, filters={"label": "3"}), timeout=20).items
    assert sorted(item.id for item in labelled) == sorted(p.name for p in gallery_images.glob("0003_*.jpg"))


def test_search_batch_is_one_index_search(served, gallery_images: Path) -> None:
    stub, calls, _ = served
    files = sorted(gallery_images.glob("*.jpg"))[:6]
    queries = [pb.SearchRequest(image=p.read_bytes(), k=1 + i % 3) for i, p in enumerate(files)]
    before = calls["search"]
    results = stub.SearchBatch(pb.SearchBatchRequest(queries=queries), timeout=20).results
    assert calls["search"] == before + 1
    assert [r.items[0].id for r in results] == [p.name for p in files]
    assert [len(r.items) for r in results] == [1 + i % 3 for i in range(6)]
    single = [stub.Search(q, timeout=20).items for q in queries]
    assert [[i.id for i in r.items] for r in results] == [[i.id for i in s] for s in single]


def test_vectors_added_over_grpc_are_found(served, synthetic) -> None:
    stub, _, _ = served
    image = _png(synthetic.image(88, 0))
    vector = stub.Embed(pb.EmbedRequest(image=image), timeout=20).vector
    item = pb.NewItem(id="by-vector", vector=pb.Vector(values=vector), metadata={"camera": "1"})
    assert stub.AddItems(pb.AddItemsRequest(items=[item]), timeout=20).added == 1
    top = stub.Search(pb.SearchRequest(image=image, k=1, filters={"camera": "1"}), timeout=20).items[0]
    assert top.id == "by-vector" and top.score == pytest.approx(1.0, abs=1e-4)
    assert stub.RemoveItems(pb.RemoveItemsRequest(ids=["by-vector"]), timeout=20).removed == 1
