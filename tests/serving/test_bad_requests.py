"""Requests whose bytes do not parse (a corrupt wire format, a filter that is not UTF-8) get
INVALID_ARGUMENT with the reason from a real gRPC server, counted under that code, and never reach
admission or the service; the server keeps serving."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from serving._proto import retrieval_pb2 as pb
from serving.backends import create_engine
from serving.bundle import Manifest
from serving.index.gallery import GalleryIndex
from serving.metrics import ServerMetrics
from serving.server import create_server
from serving.service import RetrievalService


@pytest.fixture(scope="module")
def served(tiny_bundle: Path, tiny_manifest: Manifest) -> Iterator[tuple[grpc.Channel, ServerMetrics]]:
    engine = create_engine(tiny_bundle, tiny_manifest, backend="onnxruntime-cpu")
    index = GalleryIndex(tiny_manifest.output.dim)
    rows = np.random.default_rng(0).normal(size=(3, tiny_manifest.output.dim))
    index.add(["a", "b", "c"], (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32))
    service = RetrievalService(engine, index, tiny_manifest)
    metrics = ServerMetrics()
    server, port = create_server(service, port=0, metrics=metrics)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield channel, metrics
    channel.close()
    server.stop(None)
    service.close()


def _raw(channel: grpc.Channel, method: str, data: bytes) -> grpc.RpcError:
    call = channel.unary_unary(f"/cdd.v1.Retrieval/{method}")  # bytes in, bytes out
    with pytest.raises(grpc.RpcError) as refused:
        call(data, timeout=20)
    return refused.value


def test_undecodable_requests_are_invalid_argument(served: tuple) -> None:
    channel, metrics = served
    good = pb.SearchRequest(k=1, filters={"city": "Zx"}).SerializeToString()
    cases = [
        ("Search", b"\xff\xff\xff not protobuf", "Wire format was corrupt"),
        ("Search", good.replace(b"Zx", b"Z\xff"), "bad UTF-8"),
        ("RemoveItems", pb.RemoveItemsRequest(ids=["ok"]).SerializeToString().replace(b"ok", b"\xc3("), "bad UTF-8"),
    ]
    for method, data, reason in cases:
        error = _raw(channel, method, data)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert f"the {method} request could not be parsed" in error.details() and reason in error.details()
        assert "\n" not in error.details()
    sample = metrics.registry.get_sample_value
    assert sample("cdd_requests_total", {"method": "Search", "code": "INVALID_ARGUMENT"}) == 2
    assert sample("cdd_in_flight_requests") == 0
    stats = channel.unary_unary("/cdd.v1.Retrieval/Stats", request_serializer=pb.StatsRequest.SerializeToString,
                                response_deserializer=pb.StatsResponse.FromString)
    assert stats(pb.StatsRequest(), timeout=20).count == 3  # still serving
