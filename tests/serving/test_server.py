"""A real gRPC server on a loopback port 0: real ONNX Runtime engine, real FAISS index, raw generated stubs.

Every bad input gets its status code, and a normal Search succeeds afterwards. Graceful shutdown is tested
on a `python -m serving.server` subprocess receiving SIGTERM with a call in flight.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from PIL import Image

from serving import server as server_module
from serving._proto import retrieval_pb2 as pb
from serving._proto import retrieval_pb2_grpc as pb_grpc
from serving.backends import Engine, create_engine
from serving.batcher import DynamicBatcher
from serving.bundle import Manifest
from serving.errors import DeadlineExceeded, InvalidInput, ServiceError, TooLarge, Unavailable
from serving.grpc_servicer import STATUS_FOR, status_for, wire_metadata
from serving.index.build import build_index, items_from_folder
from serving.index.errors import DuplicateIdError, IndexBundleMismatch, UnknownIdError
from serving.index.gallery import GalleryIndex
from serving.preprocess import ImageDecodeError, ImageTooLargeError, decode_image, to_model_input
from serving.server import create_server
from serving.service import RetrievalService, ServiceLimits
from tests.serving.gated_engine import wait_for

QUERY = "0003_c1s1_000001_00.jpg"
TOKEN = "s3cret-token"
MAX_MESSAGE = 64 * 1024
CODE = grpc.StatusCode


def _gallery_index(engine: Engine, manifest: Manifest, folder: Path) -> GalleryIndex:
    """The gallery as `cdd-index build` makes it: id = file name; metadata path, file, label, camera."""
    return build_index(engine, manifest, items_from_folder(folder), progress=False)[0]


@pytest.fixture(scope="module")
def engine(tiny_bundle: Path, tiny_manifest: Manifest) -> Engine:
    return create_engine(tiny_bundle, tiny_manifest, backend="onnxruntime-cpu")


def _start(engine: Engine, manifest: Manifest, folder: Path, max_wait_ms: float = 2.0, **kwargs: object):
    limits = ServiceLimits(max_k=10, max_pixels=200 * 200)
    batcher = DynamicBatcher(engine.embed, max_batch=8, max_wait_ms=max_wait_ms)
    service = RetrievalService(engine, _gallery_index(engine, manifest, folder), manifest, limits, batcher)
    server, port = create_server(service, port=0, max_message_bytes=MAX_MESSAGE, **kwargs)  # type: ignore[arg-type]
    server.start()
    return server, port, service


@pytest.fixture(scope="module")
def served(
    engine: Engine, tiny_manifest: Manifest, gallery_images: Path
) -> Iterator[tuple[int, RetrievalService]]:
    server, port, service = _start(engine, tiny_manifest, gallery_images)
    yield port, service
    server.stop(None)
    service.close()


@pytest.fixture
def channel(served: tuple[int, RetrievalService]) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{served[0]}") as chan:
        yield chan


@pytest.fixture
def stub(channel: grpc.Channel) -> pb_grpc.RetrievalStub:
    return pb_grpc.RetrievalStub(channel)


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _assert_code(call: object, code: grpc.StatusCode, message: str, *args: object, **kwargs: object) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, **kwargs)  # type: ignore[operator]
    assert caught.value.code() == code, caught.value.details()
    assert re.search(message, caught.value.details()), caught.value.details()


def _after_jpeg_headers(jpeg: bytes) -> int:
    """Offset just past a JPEG's start-of-scan header: the cut that leaves a valid header and no pixels."""
    return jpeg.index(b"\xff\xda") + 2 + int.from_bytes(jpeg[jpeg.index(b"\xff\xda") + 2 :][:2], "big")


def _assert_still_serving(stub: pb_grpc.RetrievalStub, gallery_images: Path) -> None:
    response = stub.Search(pb.SearchRequest(image=(gallery_images / QUERY).read_bytes(), k=2), timeout=10)
    assert response.items[0].id == QUERY


def test_one_table_maps_every_domain_error() -> None:
    expected = {
        InvalidInput: CODE.INVALID_ARGUMENT, ImageDecodeError: CODE.INVALID_ARGUMENT,
        ImageTooLargeError: CODE.RESOURCE_EXHAUSTED, TooLarge: CODE.RESOURCE_EXHAUSTED,
        UnknownIdError: CODE.NOT_FOUND, DuplicateIdError: CODE.ALREADY_EXISTS,
        DeadlineExceeded: CODE.DEADLINE_EXCEEDED, Unavailable: CODE.UNAVAILABLE,
        IndexBundleMismatch: CODE.INVALID_ARGUMENT,
    }
    for kind, code in expected.items():
        assert issubclass(kind, ServiceError), kind  # one error family
        assert status_for(kind("message")) == code, kind
    assert status_for(RuntimeError("bug")) is None and status_for(ValueError("bug")) is None
    kinds = [kind for kind, _ in STATUS_FOR]  # a subclass listed after its base would be unreachable
    for i, kind in enumerate(kinds):
        assert not any(issubclass(kind, earlier) for earlier in kinds[:i]), kind
    wire = wire_metadata({"a": "x", "b": 3, "c": None, "d": [1, 2]})
    assert wire == {"a": "x", "b": "3", "c": "null", "d": "[1,2]"}


def test_search_returns_the_right_identity_first(stub: pb_grpc.RetrievalStub, gallery_images: Path) -> None:
    response = stub.Search(pb.SearchRequest(image=(gallery_images / QUERY).read_bytes(), k=4), timeout=10)
    items = response.items
    assert len(items) == 4 and items[0].id == QUERY and items[0].score > 0.999
    assert items[1].metadata["label"] == "3"  # int metadata travels as its JSON text
    assert dict(items[0].metadata) == {"path": QUERY, "file": QUERY, "label": "3", "camera": "0"}
    request = pb.SearchRequest(image=(gallery_images / QUERY).read_bytes(), k=10, filters={"camera": "1"})
    filtered = stub.Search(request, timeout=10)
    assert len(filtered.items) == 10 and {i.metadata["camera"] for i in filtered.items} == {"1"}


def test_search_batch(stub: pb_grpc.RetrievalStub, gallery_images: Path) -> None:
    names = ["0001_c1s1_000001_00.jpg", "0005_c2s1_000002_00.jpg"]
    queries = [pb.SearchRequest(image=(gallery_images / n).read_bytes(), k=3) for n in names]
    response = stub.SearchBatch(pb.SearchBatchRequest(queries=queries), timeout=10)
    assert [r.items[0].id for r in response.results] == names
    assert [len(r.items) for r in response.results] == [3, 3]


def test_embed_is_the_unit_norm_engine_output(
    stub: pb_grpc.RetrievalStub, engine: Engine, tiny_manifest: Manifest, gallery_images: Path
) -> None:
    data = (gallery_images / QUERY).read_bytes()
    response = stub.Embed(pb.EmbedRequest(image=data), timeout=10)
    vector = np.asarray(response.vector, dtype=np.float32)
    assert response.dim == 16 and vector.shape == (16,)
    expected = engine.embed(to_model_input(decode_image(data), tiny_manifest)[None])[0]
    np.testing.assert_allclose(vector, expected, atol=1e-6)
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5


def test_add_remove_and_stats(
    stub: pb_grpc.RetrievalStub, gallery_images: Path, tiny_manifest: Manifest,
    served: tuple[int, RetrievalService],
) -> None:
    image = _png(np.asarray(Image.open(gallery_images / "0004_c1s1_000001_00.jpg"))[::-1].copy())
    vector = pb.Vector(values=[1.0] + [0.0] * 15)
    new_image = pb.NewItem(id="srv-img", image=image, metadata={"who": "x"})
    request = pb.AddItemsRequest(items=[new_image, pb.NewItem(id="srv-vec", vector=vector)])
    added = stub.AddItems(request, timeout=10)
    assert (added.added, added.count) == (2, 22)
    top = stub.Search(pb.SearchRequest(image=image, k=1), timeout=10).items[0]
    assert top.id == "srv-img" and dict(top.metadata) == {"who": "x"}
    stats = stub.Stats(pb.StatsRequest(), timeout=10)
    assert (stats.count, stats.dim, stats.index_type, stats.metric) == (22, 16, "flat", "cosine")
    assert (stats.bundle_name, stats.bundle_sha256) == ("tiny", tiny_manifest.sha256())
    assert (stats.backend, stats.max_k, stats.max_pixels) == ("onnxruntime-cpu", 10, 40000)
    batching = served[1].stats()["batching"]  # what the service counted, read back over gRPC
    assert stats.batching.enabled and stats.batching.max_batch == 8 and batching["requests"] >= 2
    assert (stats.batching.requests, stats.batching.batches, stats.batching.images) == (
        batching["requests"], batching["batches"], batching["images"])
    assert stats.batching.mean_batch_size == pytest.approx(batching["images"] / batching["batches"])
    removed = stub.RemoveItems(pb.RemoveItemsRequest(ids=["srv-img", "srv-vec"]), timeout=10)
    assert (removed.removed, removed.count) == (2, 20)


def test_health_and_reflection(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "cdd.v1.Retrieval"):
        response = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    expected = {"cdd.v1.Retrieval", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}
    assert expected <= services
    described = database.FindFileContainingSymbol("cdd.v1.Retrieval")
    assert described.package == "cdd.v1" and [s.name for s in described.service] == ["Retrieval"]


def test_bad_inputs_get_their_codes_and_the_server_keeps_serving(
    stub: pb_grpc.RetrievalStub, gallery_images: Path
) -> None:
    jpeg = (gallery_images / QUERY).read_bytes()
    gray = np.asarray(Image.open(gallery_images / QUERY).convert("L"))
    search, add, remove = stub.Search, stub.AddItems, stub.RemoveItems
    huge = _png(np.zeros((210, 200, 3), np.uint8))
    short_vector = pb.NewItem(id="v", vector=pb.Vector(values=[1.0] * 15))
    cases = [
        (search, pb.SearchRequest(image=b"", k=1), CODE.INVALID_ARGUMENT, "empty"),
        (search, pb.SearchRequest(image=b"plain text", k=1), CODE.INVALID_ARGUMENT, "not a recognised image"),
        *[(search, pb.SearchRequest(image=cut, k=1), CODE.INVALID_ARGUMENT, "truncated or corrupt|not a recogn")
          for cut in (jpeg[:2], jpeg[:20], jpeg[:_after_jpeg_headers(jpeg)], jpeg[: len(jpeg) // 2], jpeg[:-40])],
        (search, pb.SearchRequest(image=_png(gray)[:-30], k=1), CODE.INVALID_ARGUMENT, "truncated or corrupt"),
        (search, pb.SearchRequest(image=huge, k=1), CODE.RESOURCE_EXHAUSTED, "42000 pixels, the limit"),
        (search, pb.SearchRequest(image=jpeg, k=0), CODE.INVALID_ARGUMENT, "between 1 and 10.*found 0"),
        (search, pb.SearchRequest(image=jpeg, k=11), CODE.INVALID_ARGUMENT, "found 11"),
        (remove, pb.RemoveItemsRequest(ids=["0001_c1s1_000001_00.jpg", "nope"]), CODE.NOT_FOUND, "nope"),
        (add, pb.AddItemsRequest(items=[pb.NewItem(id="0001_c1s1_000001_00.jpg", image=jpeg)]),
         CODE.ALREADY_EXISTS, "already in the index"),
        (add, pb.AddItemsRequest(items=[short_vector]), CODE.INVALID_ARGUMENT, r"shape \(15,\).*\(16,\)"),
        (add, pb.AddItemsRequest(items=[pb.NewItem(id="v")]), CODE.INVALID_ARGUMENT, "exactly one of image"),
        (search, pb.SearchRequest(image=b"\xff" * (MAX_MESSAGE + 1), k=1), CODE.RESOURCE_EXHAUSTED,
         r"larger than max \(\d+ vs\. 65536\)"),
        (add, pb.AddItemsRequest(items=[pb.NewItem(id="x" * 257, image=jpeg)]), CODE.INVALID_ARGUMENT,
         r"id is 257 bytes.*the limit is 256 bytes"),
        (remove, pb.RemoveItemsRequest(ids=["y" * 1000]), CODE.INVALID_ARGUMENT, "id is 1000 bytes"),
        (add, pb.AddItemsRequest(items=[pb.NewItem(id="m", image=jpeg, metadata={"note": "z" * 5000})]),
         CODE.INVALID_ARGUMENT, r"metadata is 5004 bytes.*the limit is 4096 bytes"),
        (search, pb.SearchRequest(image=jpeg, k=1, filters={"f": "z" * 5000}), CODE.INVALID_ARGUMENT,
         "filters is 5001 bytes"),
    ]
    for call, request, code, message in cases:
        _assert_code(call, code, message, request, timeout=10)
        _assert_still_serving(stub, gallery_images)
    for ok in (_png(gray), _png(gray.astype(np.uint16) * 257)):  # grayscale and 16-bit PNG are converted
        assert len(stub.Search(pb.SearchRequest(image=ok, k=1), timeout=10).items) == 1
    assert stub.Stats(pb.StatsRequest(), timeout=10).count == 20  # nothing half-added or half-removed


def test_deadlines(
    engine: Engine, tiny_manifest: Manifest, gallery_images: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The server drops a request whose deadline passes in the batching window and says so itself."""
    server, port, service = _start(engine, tiny_manifest, gallery_images, max_wait_ms=3_600_000)  # closes when full
    caplog.set_level(logging.INFO, logger="serving.grpc")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as chan:
            stub = pb_grpc.RetrievalStub(chan)
            request = pb.SearchRequest(image=(gallery_images / QUERY).read_bytes(), k=1)
            assert stub.Stats(pb.StatsRequest(), timeout=10).count == 20  # connected
            before = service.stats()["batching"]
            # a deadline long enough to reach the batcher on a busy machine, short beside the hour-long window;
            # whichever side notices first answers; the server log below shows the server noticed itself
            _assert_code(stub.Search, CODE.DEADLINE_EXCEEDED, "Deadline Exceeded|the deadline passed after", request,
                         timeout=3)

            def server_said() -> list[str]:
                return [r.getMessage() for r in caplog.records if r.name == "serving.grpc"]

            wait_for(lambda: any(re.match(r"DEADLINE_EXCEEDED: the deadline passed after \d+ ms waiting for the "
                                          r"batcher", m) for m in server_said()), "the server to log the deadline")
            assert service.stats()["batching"]["expired"] == before["expired"]  # still in the open window
            spec = tiny_manifest.input
            filler = service.batcher.submit(np.zeros((7, spec.height, spec.width, 3), dtype=np.uint8))
            assert filler.result(30).shape[0] == 7  # the 8th image closed the batch
            after = service.stats()["batching"]
            assert after["expired"] == before["expired"] + 1  # the server dropped it ...
            assert after["images"] == before["images"] + 7  # ... and never embedded it
    finally:
        server.stop(None)
        service.close()


def test_bearer_token(engine: Engine, tiny_manifest: Manifest, gallery_images: Path) -> None:
    server, port, service = _start(engine, tiny_manifest, gallery_images, auth_token=TOKEN)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as chan:
            stub = pb_grpc.RetrievalStub(chan)
            request = pb.SearchRequest(image=(gallery_images / QUERY).read_bytes(), k=1)
            for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", TOKEN),)):
                _assert_code(stub.Search, CODE.UNAUTHENTICATED, "Bearer <token>", request, metadata=metadata)
            _assert_code(stub.Stats, CODE.UNAUTHENTICATED, "missing or wrong", pb.StatsRequest())
            ok = stub.Search(request, metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=10)
            assert ok.items[0].id == QUERY
            health = health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING  # probes need no token
            with pytest.raises(grpc.RpcError) as caught:
                ProtoReflectionDescriptorDatabase(chan).get_services()
            assert caught.value.code() == CODE.UNAUTHENTICATED
    finally:
        server.stop(None)
        service.close()


def test_tls(engine: Engine, tiny_manifest: Manifest, gallery_images: Path, tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make a throwaway certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30,
    )
    server, port, service = _start(engine, tiny_manifest, gallery_images, tls_cert=cert, tls_key=key)
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(f"localhost:{port}", credentials) as chan:
            stats = pb_grpc.RetrievalStub(chan).Stats(pb.StatsRequest(), timeout=10)
            assert stats.count == 20
        with grpc.insecure_channel(f"127.0.0.1:{port}") as chan:
            with pytest.raises(grpc.RpcError) as caught:
                pb_grpc.RetrievalStub(chan).Stats(pb.StatsRequest(), timeout=5)
            assert caught.value.code() == CODE.UNAVAILABLE  # a plaintext client cannot talk to a TLS port
    finally:
        server.stop(None)
        service.close()


def test_port_in_use_is_an_os_error(served: tuple[int, RetrievalService]) -> None:
    with pytest.raises(OSError, match=f"cannot bind 127.0.0.1:{served[0]}"):
        create_server(served[1], port=served[0])


def _index_dir(
    engine: Engine, manifest: Manifest, images: Path, out: Path, bundle_sha: str | None = None
) -> Path:
    index = _gallery_index(engine, manifest, images)
    index.bundle_sha256 = bundle_sha or manifest.sha256()
    index.save(out)
    return out


def test_main_refuses_an_index_built_with_another_bundle(
    engine: Engine, tiny_bundle: Path, tiny_manifest: Manifest, gallery_images: Path, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    index = _index_dir(engine, tiny_manifest, gallery_images, tmp_path / "index", bundle_sha="0" * 64)
    code = server_module.main(
        ["--bundle", str(tiny_bundle), "--index", str(index), "--port", "0", "--backend", "onnxruntime-cpu"]
    )
    assert code == 2 and "rebuild it" in caplog.text
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored


def test_sigterm_drains_the_in_flight_call_and_exits_zero(
    engine: Engine, tiny_bundle: Path, tiny_manifest: Manifest, gallery_images: Path, tmp_path: Path
) -> None:
    index = _index_dir(engine, tiny_manifest, gallery_images, tmp_path / "index")
    root = Path(server_module.__file__).resolve().parents[1]
    command = [
        sys.executable, "-m", "serving.server", "--bundle", str(tiny_bundle), "--index", str(index),
        "--port", "0", "--backend", "onnxruntime-cpu", "--max-wait-ms", "2500", "--grace-s", "5",
        "--metrics-port", "0", "--workers", "1",  # one process: its metrics and its port (workers: test_serve_workers)
    ]
    env = {**os.environ, "PYTHONPATH": str(root)}
    process = subprocess.Popen(command, cwd=root, env=env, stderr=subprocess.PIPE, text=True)
    try:
        log_lines: list[str] = []
        port = _wait_for_port(process, log_lines)
        metrics_url = re.search(r"metrics on (http://\S+/metrics)", "".join(log_lines)).group(1)  # type: ignore[union-attr]
        outcome: dict[str, object] = {}

        def slow_search() -> None:  # waits up to 2.5 s in the batcher window: SIGTERM comes while it waits
            with grpc.insecure_channel(f"127.0.0.1:{port}") as chan:
                request = pb.SearchRequest(image=(gallery_images / QUERY).read_bytes(), k=1)
                outcome["id"] = pb_grpc.RetrievalStub(chan).Search(request, timeout=30).items[0].id

        caller = threading.Thread(target=slow_search)
        caller.start()
        wait_for(lambda: re.search(r"^cdd_in_flight_requests 1\.0$", _read(metrics_url), re.M) is not None,
                 "the search to be in flight")
        process.send_signal(signal.SIGTERM)
        caller.join(30)
        assert process.wait(30) == 0
        assert outcome.get("id") == QUERY
        log = process.stderr.read() if process.stderr else ""
        assert "received SIGTERM" in log and "stopped" in log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)


def _read(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def _wait_for_port(process: subprocess.Popen, lines: list[str] | None = None) -> int:
    """Read the server's log (into ``lines``) until 'serving cdd.v1.Retrieval on 127.0.0.1:PORT' (at most 30 s)."""
    deadline = time.monotonic() + 30
    lines = [] if lines is None else lines
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        lines.append(line)
        found = re.search(r"serving cdd\.v1\.Retrieval on 127\.0\.0\.1:(\d+)", line)
        if found:
            return int(found.group(1))
    raise AssertionError("server did not start:\n" + "".join(lines))
