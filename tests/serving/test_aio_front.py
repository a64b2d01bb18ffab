"""The grpc.aio front on a real server (loopback, real ONNX Runtime engine, real FAISS gallery): a Search
never leaves the event loop while it waits (no pool thread is ever started for it), the batch worker wakes
the loop once per batch with every answer of that batch, and a gallery change stuck in fsync does not
block the loop (health and a Search still answer). Engine and disk are held by gates, not by load."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving._proto import retrieval_pb2 as pb
from serving._proto import retrieval_pb2_grpc as pb_grpc
from serving.backends import Engine, create_engine
from serving.batch_waiters import BatchWaiters
from serving.batcher import DynamicBatcher
from serving.bundle import Manifest
from serving.index.build import build_index, items_from_folder
from serving.index.durable_gallery import DurableGallery
from serving.server import create_server
from serving.service import RetrievalService
from tests.serving.gated_engine import GatedEngine, wait_for

QUERY = "0003_c1s1_000001_00.jpg"
WAIT_S = 30.0


@pytest.fixture(scope="module")
def engine(tiny_bundle: Path, tiny_manifest: Manifest) -> Engine:
    return create_engine(tiny_bundle, tiny_manifest, backend="onnxruntime-cpu")


@pytest.fixture
def served(engine: Engine, tiny_manifest: Manifest, gallery_images: Path, tmp_path: Path) -> Iterator[tuple]:
    """(stub, channel, server, service, gated engine) over a durable FAISS gallery of the 20 test images."""
    index = build_index(engine, tiny_manifest, items_from_folder(gallery_images), progress=False)[0]
    index.save(tmp_path / "index")
    gated = GatedEngine(engine)
    batcher = DynamicBatcher(gated.embed, max_batch=4, max_wait_ms=0.0)
    gallery = DurableGallery.open(tmp_path / "index", tiny_manifest.sha256())
    service = RetrievalService(gated, gallery, tiny_manifest, batcher=batcher)  # type: ignore[arg-type]
    server, port = create_server(service, port=0)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield pb_grpc.RetrievalStub(channel), channel, server, service, gated
    finally:
        gated.gate.set()
        channel.close()
        server.stop(None)
        service.close()


def _search(gallery_images: Path) -> pb.SearchRequest:
    return pb.SearchRequest(image=(gallery_images / QUERY).read_bytes(), k=1)


def test_search_waits_on_the_loop_and_each_batch_wakes_it_once(
    served: tuple, gallery_images: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub, _, server, service, gated = served
    wakes: list[int] = []
    threads: set[str] = set()
    real_resolve, real_query = BatchWaiters._resolve, service.search_query

    def resolve(self: BatchWaiters, futures: list) -> None:
        wakes.append(len(futures))
        real_resolve(self, futures)

    def search_query(*args: object, **kwargs: object) -> object:
        threads.add(threading.current_thread().name)
        return real_query(*args, **kwargs)

    monkeypatch.setattr(BatchWaiters, "_resolve", resolve)
    monkeypatch.setattr(service, "search_query", search_query)
    gated.gate.clear()
    first = stub.Search.future(_search(gallery_images), timeout=WAIT_S)
    wait_for(lambda: gated.entered == 1, "the first Search to hold the engine")
    queued = [stub.Search.future(_search(gallery_images), timeout=WAIT_S) for _ in range(3)]
    wait_for(lambda: service.batcher.queued_images == 3, "3 Searches queued behind it")
    gated.gate.set()
    assert [f.result().items[0].id for f in (first, *queued)] == [QUERY] * 4
    assert gated.calls == [1, 3]  # the engine ran the three queued Searches as one batch ...
    assert wakes == [1, 3]  # ... and the loop was woken once for each batch, with all of its answers
    assert threads == {"cdd-loop"}  # every Search was checked and queued on the event loop ...
    assert not server._executor._threads  # ... and no pool thread was ever started for them


def test_a_change_stuck_in_fsync_does_not_block_the_loop(
    served: tuple, gallery_images: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub, channel, _, _, _ = served
    in_fsync, release = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        if threading.current_thread().name.startswith("cdd-rpc"):  # the AddItems call's pool thread
            in_fsync.set()
            assert release.wait(WAIT_S), "the test never released fsync"
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    vector = pb.Vector(values=[1.0] + [0.0] * 15)
    change = stub.AddItems.future(pb.AddItemsRequest(items=[pb.NewItem(id="new", vector=vector)]), timeout=WAIT_S)
    assert in_fsync.wait(WAIT_S)
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=WAIT_S)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert not change.done()  # still in fsync while the loop answered
    release.set()
    assert change.result().added == 1
    assert stub.Search(_search(gallery_images), timeout=WAIT_S).items[0].id == QUERY
