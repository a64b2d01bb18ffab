"""The whole deployed path on tiny artifacts: train -> export -> cdd-index build -> gRPC server, queried
by a client generated from the .proto alone (nothing from this project's serving code on the client side).
"""

from __future__ import annotations

import importlib
import json
import logging
import re
import struct
import sys
import threading
import zlib
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from export.__main__ import main as export_main
from serving.bundle import load_bundle
from serving.config import ServeConfig
from serving.index.__main__ import main as index_main
from serving.server import build_service, create_server
from training.data.layouts import load_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def deployed(student_run, tiny_reid_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("deployed")
    bundle, index = work / "bundle", work / "index"
    assert export_main(["--run", str(student_run), "--out", str(bundle), "--set", "batch.max=16"]) == 0
    assert index_main(["build", "--bundle", str(bundle), "--layout", "market1501", "--root", str(tiny_reid_root),
                       "--split", "gallery", "--out", str(index), "--quiet"]) == 0
    return bundle, index


def _proto_only_stubs(tmp_path: Path):
    """Generate Python stubs from protos/ into tmp_path with grpc_tools, as an app developer would."""
    from grpc_tools import protoc

    out = tmp_path / "client_stubs"
    out.mkdir()
    rc = protoc.main(["protoc", f"-I{REPO / 'protos'}", f"--python_out={out}", f"--grpc_python_out={out}",
                      str(REPO / "protos" / "cdd" / "v1" / "retrieval.proto")])
    assert rc == 0
    sys.path.insert(0, str(out))
    try:
        pb2 = importlib.import_module("cdd.v1.retrieval_pb2")
        pb2_grpc = importlib.import_module("cdd.v1.retrieval_pb2_grpc")
    finally:
        sys.path.remove(str(out))
    assert not pb2.__file__.startswith(str(REPO / "serving"))
    return pb2, pb2_grpc


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height RGB pixels (its data is a few bytes)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def test_deployed_map_equals_pytorch_map(deployed, student_run, tiny_reid_root, capsys):
    bundle, index = deployed
    capsys.readouterr()
    assert index_main(["eval", "--index", str(index), "--bundle", str(bundle), "--layout", "market1501",
                       "--root", str(tiny_reid_root), "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    torch_final = json.loads((student_run / "metrics.json").read_text())["final"]
    assert abs(result["mAP"] - torch_final["mAP"]) < 0.5
    assert abs(result["rank1"] - torch_final["rank1"]) < 0.5 + 100 / result["num_valid_queries"]


def test_proto_only_client_searches_a_real_server(deployed, tiny_reid_root, tmp_path):
    bundle, index = deployed
    pb2, pb2_grpc = _proto_only_stubs(tmp_path)
    service = build_service(ServeConfig(bundle=bundle, index=index, port=0, engine_threads=1))
    described = service.engine.describe()  # ServeConfig's engine settings reach the ONNX Runtime session
    assert (described["intra_op_spinning"], described["intra_op_threads"]) == (False, 1)
    server, port = create_server(service, port=0)
    server.start()
    try:
        service.warmup()
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = pb2_grpc.RetrievalStub(channel)
        queries = load_dataset("market1501", tiny_reid_root).query
        for record in queries:
            image = Path(record.path).read_bytes()
            reply = stub.Search(pb2.SearchRequest(image=image, k=5), timeout=30)
            # every query gets the answer the in-process engine + index give: same ids, same scores, in order
            expected = service.search(image, 5)
            assert [item.id for item in reply.items] == [hit.id for hit in expected], record.path
            assert [item.score for item in reply.items] == pytest.approx([hit.score for hit in expected], abs=1e-5)
            assert [int(item.metadata["label"]) for item in reply.items] == [h.metadata["label"] for h in expected]
            assert reply.items[0].metadata["file"].endswith(".jpg")
        stats = stub.Stats(pb2.StatsRequest(), timeout=10)
        assert stats.count == len(load_dataset("market1501", tiny_reid_root).gallery)
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        good = Path(queries[0].path).read_bytes()
        bad_inputs = [
            (stub.Search, pb2.SearchRequest(image=b"not an image", k=5), grpc.StatusCode.INVALID_ARGUMENT),
            (stub.Search, pb2.SearchRequest(image=good[:40], k=5), grpc.StatusCode.INVALID_ARGUMENT),
            (stub.Embed, pb2.EmbedRequest(image=good[: len(good) * 3 // 4]), grpc.StatusCode.INVALID_ARGUMENT),
            (stub.Search, pb2.SearchRequest(image=_png_declaring(5000, 5000), k=5), grpc.StatusCode.RESOURCE_EXHAUSTED),
            (stub.AddItems, pb2.AddItemsRequest(items=[pb2.NewItem(id="i" * 300, image=good)]),
             grpc.StatusCode.INVALID_ARGUMENT),
            (stub.AddItems, pb2.AddItemsRequest(items=[pb2.NewItem(id="m", image=good, metadata={"k": "v" * 5000})]),
             grpc.StatusCode.INVALID_ARGUMENT),
        ]
        for call, request, code in bad_inputs:
            with pytest.raises(grpc.RpcError) as bad:
                call(request, timeout=10)
            assert bad.value.code() == code, bad.value.details()
            assert len(stub.Search(pb2.SearchRequest(image=good, k=5), timeout=30).items) == 5  # still serving
        channel.close()
    finally:
        server.stop(None)
        service.close()


def test_serve_main_runs_with_the_documented_flags(deployed, tiny_reid_root, tmp_path, caplog):
    from serving.server import _config, _parser, serve

    bundle, index = deployed
    pb2, pb2_grpc = _proto_only_stubs(tmp_path)
    config = _config(_parser().parse_args(["--bundle", str(bundle), "--index", str(index), "--port", "0"]))
    assert config.host == "127.0.0.1" and config.port == 0
    stop, ready = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["code"] = serve(config, stop, ready)
        except BaseException as exc:  # noqa: BLE001 - the test reports any crash of the server thread
            outcome["error"] = exc

    caplog.set_level(logging.INFO, logger="serving.server")
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert ready.wait(60), outcome
        port = int(re.search(r"serving cdd\.v1\.Retrieval on 127\.0\.0\.1:(\d+)", caplog.text).group(1))
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:  # it serves while running ...
            stats = pb2_grpc.RetrievalStub(channel).Stats(pb2.StatsRequest(), timeout=10)
            gallery = len(load_dataset("market1501", tiny_reid_root).gallery)
            expected = (load_bundle(bundle).name, gallery, "onnxruntime-cpu")
            assert (stats.bundle_name, stats.count, stats.backend) == expected
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    assert outcome == {"code": 0}  # ... and shuts down cleanly, no exception after `ready`
