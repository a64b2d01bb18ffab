"""Overload behaviour against a real gRPC server on port 0 (real ONNX Runtime engine, real FAISS index).

The engine is wrapped in `GatedEngine`: it blocks while its gate is closed, so "the engine is busy" is a
state the test sets, not a load it has to generate. No assertion depends on timing: each waits for a
state (with a generous bound) and then checks status codes, counters and order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from serving._proto import retrieval_pb2 as pb
from serving._proto import retrieval_pb2_grpc as pb_grpc
from serving.backends import Engine, create_engine
from serving.batcher import DynamicBatcher
from serving.bundle import Manifest
from serving.index.build import build_index, items_from_folder
from serving.metrics import ServerMetrics
from serving.server import create_server
from serving.service import RetrievalService
from tests.serving.gated_engine import GatedEngine, wait_for

QUERY = "0003_c1s1_000001_00.jpg"
CODE = grpc.StatusCode


@pytest.fixture(scope="module")
def engine(tiny_bundle: Path, tiny_manifest: Manifest) -> Engine:
    return create_engine(tiny_bundle, tiny_manifest, backend="onnxruntime-cpu")


@pytest.fixture
def start(engine: Engine, tiny_manifest: Manifest, gallery_images: Path) -> Iterator[Callable[..., Any]]:
    """start(gated, batcher kwargs..., server kwargs...) -> (stub, service, metrics); stopped afterwards."""
    stops: list[Callable[[], None]] = []

    def _start(gated: GatedEngine, *, max_batch: int = 4, max_wait_ms: float = 0.0, instances: int = 1,
               max_queue_images: int = 64, **server_kwargs: Any) -> tuple[Any, RetrievalService, ServerMetrics]:
        index = build_index(engine, tiny_manifest, items_from_folder(gallery_images), progress=False)[0]
        metrics = ServerMetrics()
        batcher = DynamicBatcher(gated.embed, max_batch=max_batch, max_wait_ms=max_wait_ms, instances=instances,
                                 max_queue_images=max_queue_images, observer=metrics.observe_batch)
        service = RetrievalService(gated, index, tiny_manifest, batcher=batcher)  # type: ignore[arg-type]
        server, port = create_server(service, port=0, metrics=metrics, **server_kwargs)
        server.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")

        def stop() -> None:
            gated.gate.set()
            channel.close()
            server.stop(None)
            service.close()

        stops.append(stop)
        return pb_grpc.RetrievalStub(channel), service, metrics

    yield _start
    for stop in stops:
        stop()


def _search(gallery_images: Path) -> pb.SearchRequest:
    return pb.SearchRequest(image=(gallery_images / QUERY).read_bytes(), k=1)


def _code(future: grpc.Future) -> grpc.StatusCode:
    try:
        future.result()
    except grpc.RpcError as exc:
        return exc.code()
    return CODE.OK


def _sample(metrics: ServerMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_concurrent_call_cap_refuses_at_once_and_stats_still_answers(
    engine: Engine, start: Callable[..., Any], gallery_images: Path
) -> None:
    gated = GatedEngine(engine)
    stub, service, metrics = start(gated, max_concurrent_rpcs=2, max_workers=4)
    gated.gate.clear()
    held = [stub.Search.future(_search(gallery_images), timeout=30) for _ in range(2)]
    wait_for(lambda: gated.entered >= 1 and _sample(metrics, "cdd_in_flight_requests") == 2, "2 calls in flight")
    with pytest.raises(grpc.RpcError) as refused:
        stub.Search(_search(gallery_images), timeout=30)
    assert refused.value.code() == CODE.RESOURCE_EXHAUSTED
    assert "--max-concurrent-rpcs" in refused.value.details()
    assert stub.Stats(pb.StatsRequest(), timeout=10).count == 20  # Stats is exempt from the cap
    gated.gate.set()
    assert [_code(f) for f in held] == [CODE.OK, CODE.OK]
    assert _sample(metrics, "cdd_requests_total", method="Search", code="RESOURCE_EXHAUSTED") == 1
    assert _sample(metrics, "cdd_requests_total", method="Search", code="OK") == 2
    assert stub.Search(_search(gallery_images), timeout=30).items[0].id == QUERY  # the slots came back


def test_full_queue_refuses_with_resource_exhausted(
    engine: Engine, start: Callable[..., Any], gallery_images: Path
) -> None:
    gated = GatedEngine(engine)
    stub, service, _ = start(gated, max_batch=1, max_queue_images=2)
    gated.gate.clear()
    running = stub.Search.future(_search(gallery_images), timeout=30)
    wait_for(lambda: gated.entered == 1, "the first call to reach the engine")
    queued = [stub.Search.future(_search(gallery_images), timeout=30) for _ in range(2)]
    wait_for(lambda: service.batcher.queued_images == 2, "2 images queued")
    with pytest.raises(grpc.RpcError) as refused:
        stub.Search(_search(gallery_images), timeout=30)
    assert refused.value.code() == CODE.RESOURCE_EXHAUSTED and "--max-queue-images" in refused.value.details()
    gated.gate.set()
    assert [_code(f) for f in (running, *queued)] == [CODE.OK] * 3


def test_a_call_without_deadline_gets_the_server_maximum(
    engine: Engine, start: Callable[..., Any], gallery_images: Path
) -> None:
    gated = GatedEngine(engine)
    stub, _, _ = start(gated, max_batch=1, max_deadline_s=0.3)
    gated.gate.clear()
    blocker = stub.Search.future(_search(gallery_images), timeout=30)  # holds the engine at the gate
    wait_for(lambda: gated.entered == 1, "the engine to be held")
    with pytest.raises(grpc.RpcError) as caught:
        stub.Search(_search(gallery_images))  # no deadline from the client: the server's 0.3 s applies
    assert caught.value.code() == CODE.DEADLINE_EXCEEDED
    gated.gate.set()
    blocker.exception()


def test_a_cancelled_call_frees_its_slot_and_its_queued_work(
    engine: Engine, start: Callable[..., Any], gallery_images: Path
) -> None:
    gated = GatedEngine(engine)
    stub, service, metrics = start(gated, max_batch=1, max_concurrent_rpcs=1, max_workers=3)
    gated.gate.clear()
    spec = service.manifest.input
    occupier = service.batcher.submit(np.zeros((1, spec.height, spec.width, 3), dtype=np.uint8))  # not an RPC
    wait_for(lambda: gated.entered == 1, "the engine to be held")
    victim = stub.Search.future(_search(gallery_images), timeout=30)
    wait_for(lambda: service.batcher.queued_images == 1, "the call to be queued")
    with pytest.raises(grpc.RpcError) as refused:
        stub.Search(_search(gallery_images), timeout=30)
    assert refused.value.code() == CODE.RESOURCE_EXHAUSTED  # the one slot is held by the queued call
    victim.cancel()
    wait_for(lambda: _sample(metrics, "cdd_in_flight_requests") == 0, "the cancelled call to free its slot")
    with pytest.raises(grpc.RpcError) as later:  # the engine is still held: admitted, then times out
        stub.Search(_search(gallery_images), timeout=3)  # long enough to be queued on a busy machine
    assert later.value.code() == CODE.DEADLINE_EXCEEDED
    # The server's copy of that deadline starts when the call arrives, a little after the client's: let the
    # server give up too before the engine is freed, or the queued request may still be run.
    wait_for(lambda: _sample(metrics, "cdd_in_flight_requests") == 0, "the timed-out call to end on the server")
    gated.gate.set()
    occupier.result(timeout=30)
    wait_for(lambda: service.batcher.stats().expired >= 2, "the dropped requests to be counted")
    assert gated.calls == [1]  # neither the cancelled nor the timed-out call was ever embedded


def test_large_add_items_is_split_so_a_search_overtakes_it(
    engine: Engine, start: Callable[..., Any], gallery_images: Path
) -> None:
    gated = GatedEngine(engine)
    stub, service, _ = start(gated, max_batch=4)
    gated.gate.clear()
    other = next(p for p in sorted(gallery_images.glob("*.jpg")) if p.name[:4] != QUERY[:4])  # not the query's id
    items = [pb.NewItem(id=f"bulk-{i}", image=other.read_bytes()) for i in range(40)]  # 10 chunks of 4
    bulk = stub.AddItems.future(pb.AddItemsRequest(items=items), timeout=60)
    wait_for(lambda: gated.entered == 1, "the first chunk to hold the engine")
    search = stub.Search.future(_search(gallery_images), timeout=60)
    wait_for(lambda: service.batcher.queued_images == 1, "the search to queue behind the first chunk")
    gated.gate.set()
    assert search.result().items[0].id == QUERY  # its own best match, not one of the bulk items
    assert bulk.result().added == 40
    assert gated.calls == [4, 1] + [4] * 9  # the search ran right after the first chunk, before the other 9


def test_instances_run_engine_calls_side_by_side(
    engine: Engine, start: Callable[..., Any], gallery_images: Path
) -> None:
    gated = GatedEngine(engine)
    stub, _, _ = start(gated, max_batch=1, instances=2)
    gated.gate.clear()
    calls = [stub.Search.future(_search(gallery_images), timeout=30) for _ in range(3)]
    wait_for(lambda: gated.entered == 2, "two engine calls at once")  # one worker could only hold one
    gated.gate.set()
    assert [_code(f) for f in calls] == [CODE.OK] * 3
