"""The whole deployed path on tiny artifacts: train -> export -> cdd-index build -> gRPC server, queried
by a client generated from the .proto alone (nothing from this project's serving code on the client side).
"""

from __future__ import annotations

import importlib
import json
import sys
import threading
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from export.__main__ import main as export_main
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


def test_deployed_map_equals_pytorch_map(deployed, student_run, tiny_reid_root, capsys):
    bundle, index = deployed
    capsys.readouterr()
    assert index_main(["eval", "--index", str(index), "--bundle", str(bundle), "--layout", "market1501",
                       "--root", str(tiny_reid_root), "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    torch_final = json.loads((student_run / "metrics.json").read_text())["final"]
    assert abs(100 * result["mAP"] - torch_final["mAP"]) < 0.5
    assert abs(100 * result["rank1"] - torch_final["rank1"]) < 0.5 + 100 / result["num_valid_queries"]


def test_proto_only_client_searches_a_real_server(deployed, tiny_reid_root, tmp_path):
    bundle, index = deployed
    pb2, pb2_grpc = _proto_only_stubs(tmp_path)
    service = build_service(ServeConfig(bundle=bundle, index=index, port=0))
    server, port = create_server(service, port=0)
    server.start()
    try:
        service.warmup()
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = pb2_grpc.RetrievalStub(channel)
        queries = load_dataset("market1501", tiny_reid_root).query
        top_labels = []
        for record in queries:
            reply = stub.Search(pb2.SearchRequest(image=Path(record.path).read_bytes(), k=5), timeout=30)
            assert len(reply.items) == 5
            scores = [item.score for item in reply.items]
            assert scores == sorted(scores, reverse=True)
            top_labels.append(int(reply.items[0].metadata["label"]) == record.pid)
            assert reply.items[0].metadata["file"].endswith(".jpg")
        # the same answers an in-process engine + index give (the deployed path is deterministic)
        in_process = service.search(Path(queries[0].path).read_bytes(), 5)
        again = stub.Search(pb2.SearchRequest(image=Path(queries[0].path).read_bytes(), k=5), timeout=30)
        assert [h.id for h in in_process] == [item.id for item in again.items]
        stats = stub.Stats(pb2.StatsRequest(), timeout=10)
        assert stats.count == len(load_dataset("market1501", tiny_reid_root).gallery)
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as bad:
            stub.Search(pb2.SearchRequest(image=b"not an image", k=5), timeout=10)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        channel.close()
    finally:
        server.stop(None)
        service.close()
    assert sum(top_labels) > 0


def test_serve_main_runs_with_the_documented_flags(deployed):
    from serving.server import _config, _parser

    bundle, index = deployed
    config = _config(_parser().parse_args(["--bundle", str(bundle), "--index", str(index), "--port", "0"]))
    assert config.host == "127.0.0.1" and config.port == 0
    stop, ready = threading.Event(), threading.Event()
    from serving.server import serve

    thread = threading.Thread(target=serve, args=(config, stop, ready), daemon=True)
    thread.start()
    assert ready.wait(60)
    stop.set()
    thread.join(30)
    assert not thread.is_alive()
