"""Work stops when its caller is gone: the service checks the deadline (an injected clock) and the call's
cancellation before each image it decodes, charges declared pixels against the per-call budget, and over
real gRPC a cancelled or expired SearchBatch frees its admission slot within one image's decode (observed
with events: a decoder gate and the admission's leave, never a timing)."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image

from serving import service as service_module
from serving._proto import retrieval_pb2 as pb
from serving._proto import retrieval_pb2_grpc as pb_grpc
from serving.admission import Admission
from serving.backends import Engine, create_engine
from serving.bundle import Manifest
from serving.errors import Cancelled, DeadlineExceeded, TooLarge
from serving.index.gallery import GalleryIndex
from serving.request_context import RequestContext, current_request, request_scope
from serving.server import create_server
from serving.service import NewItem, Query, RetrievalService, ServiceLimits

IMAGES = 10
WAIT_S = 60  # how long an event may take on a very busy machine; never reached when the code is right


@pytest.fixture(scope="module")
def engine(tiny_bundle: Path, tiny_manifest: Manifest) -> Engine:
    return create_engine(tiny_bundle, tiny_manifest, backend="onnxruntime-cpu")


@pytest.fixture(scope="module")
def png(synthetic: Any) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(synthetic.image(2, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def _service(engine: Engine, manifest: Manifest, **kwargs: Any) -> RetrievalService:
    index = GalleryIndex(manifest.output.dim)
    rows = np.random.default_rng(0).normal(size=(4, manifest.output.dim))
    index.add([f"g{i}" for i in range(4)], (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32))
    return RetrievalService(engine, index, manifest, **kwargs)


class Decoder:
    """Wraps the service's decoder: counts decodes of ``method`` calls, calls ``on_decode(n)`` after each."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, on_decode=lambda n: None, method: str | None = None) -> None:
        self.count = 0
        real = service_module.image_to_model_input

        def decode(*args: Any, **kwargs: Any) -> np.ndarray:
            pixels = real(*args, **kwargs)
            call = current_request()
            if method is None or (call is not None and call.method == method):
                self.count += 1
                on_decode(self.count)
            return pixels

        monkeypatch.setattr(service_module, "image_to_model_input", decode)


def test_an_expired_deadline_stops_decoding_at_the_next_image(
    engine: Engine, tiny_manifest: Manifest, png: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [0.0]
    decoder = Decoder(monkeypatch, on_decode=lambda n: now.__setitem__(0, float(n)))  # each decode: 1 s
    with _service(engine, tiny_manifest, clock=lambda: now[0]) as service:
        with pytest.raises(DeadlineExceeded, match=r"before decoding queries\[4\]"):
            service.search_batch([Query(png, 1)] * IMAGES, deadline=3.5)
        assert decoder.count == 4  # decoded at t = 0, 1, 2, 3; at t = 4 the call stopped
        now[0], decoder.count = 0.0, 0
        with pytest.raises(DeadlineExceeded, match="before decoding items"):
            service.add_items([NewItem(f"n{i}", image=png) for i in range(IMAGES)], deadline=1.5)
        assert decoder.count == 2 and service.count() == 4


def test_a_cancelled_call_stops_decoding_at_the_next_image(
    engine: Engine, tiny_manifest: Manifest, png: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    call = RequestContext("r1", "SearchBatch")
    decoder = Decoder(monkeypatch, on_decode=lambda n: call.cancel() if n == 2 else None)
    with _service(engine, tiny_manifest) as service, request_scope(call):
        with pytest.raises(Cancelled, match="cancelled"):
            service.search_batch([Query(png, 1)] * IMAGES)
    assert decoder.count == 2


def test_the_per_call_pixel_budget_refuses_before_decoding(
    engine: Engine, tiny_manifest: Manifest, png: bytes, monkeypatch: pytest.MonkeyPatch, synthetic: Any
) -> None:
    height, width = synthetic.image(2, 0).shape[:2]
    decoder = Decoder(monkeypatch)
    limits = ServiceLimits(max_call_pixels=3 * height * width)
    with _service(engine, tiny_manifest, limits=limits) as service:
        assert len(service.search_batch([Query(png, 1)] * 3)) == 3
        decoder.count = 0
        with pytest.raises(TooLarge, match=rf"queries\[3\]: .* {4 * height * width} pixels so far, .* at most "
                                           rf"{3 * height * width} per call \(max_call_pixels\)"):
            service.search_batch([Query(png, 1)] * 4)
        assert decoder.count == 3  # the fourth image was refused before its pixels were decoded


@pytest.fixture
def one_slot(engine: Engine, tiny_manifest: Manifest, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple]:
    """A real server admitting one Retrieval call at a time; yields (stub, left) where ``left`` is set each
    time a call gives its admission slot back."""
    left = threading.Event()
    real_leave = Admission.leave

    def leave(self: Admission) -> None:
        real_leave(self)
        left.set()

    monkeypatch.setattr(Admission, "leave", leave)
    service = _service(engine, tiny_manifest)
    server, port = create_server(service, port=0, max_concurrent_rpcs=1, max_workers=4)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield pb_grpc.RetrievalStub(channel), left
    finally:
        channel.close()
        server.stop(None)
        service.close()


def _gate_until_the_call_ends(monkeypatch: pytest.MonkeyPatch) -> tuple[Decoder, threading.Event]:
    """SearchBatch's first decode signals ``started`` and holds until its call is cancelled (by the client
    or by gRPC at the deadline)."""
    started = threading.Event()

    def hold(n: int) -> None:
        if n == 1:
            ended = threading.Event()
            current_request().on_cancel(ended.set)
            started.set()
            assert ended.wait(WAIT_S), "the call was never cancelled"

    return Decoder(monkeypatch, on_decode=hold, method="SearchBatch"), started


def test_a_cancelled_search_batch_frees_its_slot_within_one_image(
    one_slot: tuple, png: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub, left = one_slot
    decoder, started = _gate_until_the_call_ends(monkeypatch)
    request = pb.SearchBatchRequest(queries=[pb.SearchRequest(image=png, k=1)] * IMAGES)
    future = stub.SearchBatch.future(request, timeout=WAIT_S)
    assert started.wait(WAIT_S)
    with pytest.raises(grpc.RpcError) as refused:  # the one slot is taken
        stub.Search(pb.SearchRequest(image=png, k=1), timeout=WAIT_S)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    left.clear()
    future.cancel()
    assert left.wait(WAIT_S)  # the slot came back ...
    assert decoder.count == 1  # ... after the image being decoded, not after all ten
    assert len(stub.Search(pb.SearchRequest(image=png, k=1), timeout=WAIT_S).items) == 1


def test_an_expired_search_batch_frees_its_slot_within_one_image(
    one_slot: tuple, png: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub, left = one_slot
    decoder, _ = _gate_until_the_call_ends(monkeypatch)
    request = pb.SearchBatchRequest(queries=[pb.SearchRequest(image=png, k=1)] * IMAGES)
    left.clear()
    with pytest.raises(grpc.RpcError) as expired:
        stub.SearchBatch(request, timeout=1.0)
    assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert left.wait(WAIT_S) and decoder.count <= 1
    assert len(stub.Search(pb.SearchRequest(image=png, k=1), timeout=WAIT_S).items) == 1
