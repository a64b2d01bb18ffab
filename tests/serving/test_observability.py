"""Metrics, request ids, JSON logs, rate-limited client-error logs and the engine watchdog, each checked on
a real server: `serve()` in a thread (metrics endpoint scraped over HTTP, health over gRPC) or a
``python -m serving.server`` subprocess (its stderr parsed as JSON lines)."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving import server as server_module
from serving._proto import retrieval_pb2 as pb
from serving._proto import retrieval_pb2_grpc as pb_grpc
from serving.backends import Engine, create_engine
from serving.bundle import Manifest
from serving.config import ServeConfig
from serving.index.build import build_index, items_from_folder
from serving.log_rate import RateLimitedLog
from serving.server import create_server
from serving.service import RetrievalService
from tests.serving.gated_engine import GatedEngine, wait_for

QUERY = "0003_c1s1_000001_00.jpg"
CODE = grpc.StatusCode


@pytest.fixture(scope="module")
def engine(tiny_bundle: Path, tiny_manifest: Manifest) -> Engine:
    return create_engine(tiny_bundle, tiny_manifest, backend="onnxruntime-cpu")


@pytest.fixture(scope="module")
def index_dir(engine: Engine, tiny_manifest: Manifest, gallery_images: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("obs") / "index"
    build_index(engine, tiny_manifest, items_from_folder(gallery_images), progress=False)[0].save(out)
    return out


def _trailing_id(call: grpc.Call) -> str:
    return dict(call.trailing_metadata())["x-request-id"]


def _health(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status


def test_metrics_request_ids_and_watchdog_on_a_running_server(
    engine: Engine, tiny_bundle: Path, index_dir: Path, gallery_images: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    gated = GatedEngine(engine)
    monkeypatch.setattr(server_module, "create_engine", lambda *args, **kwargs: gated)
    config = ServeConfig(bundle=tiny_bundle, index=index_dir, port=0, backend="onnxruntime-cpu", max_batch=1,
                         metrics_port=0, watchdog_s=0.3)
    stop, ready = threading.Event(), threading.Event()
    caplog.set_level(logging.INFO)
    runner = threading.Thread(target=server_module.serve, args=(config, stop, ready))
    runner.start()
    try:
        assert ready.wait(60)
        port = int(re.search(r"serving cdd\.v1\.Retrieval on 127\.0\.0\.1:(\d+)", caplog.text).group(1))
        metrics_url = re.search(r"metrics on (http://127\.0\.0\.1:\d+/metrics)", caplog.text).group(1)
        request = pb.SearchRequest(image=(gallery_images / QUERY).read_bytes(), k=1)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.RetrievalStub(channel)
            _, call = stub.Search.with_call(request, timeout=10, metadata=(("x-request-id", "req-42"),))
            assert _trailing_id(call) == "req-42"
            _, call = stub.Search.with_call(request, timeout=10)
            assert re.fullmatch(r"[0-9a-f]{32}", _trailing_id(call))  # generated when the client sends none
            with pytest.raises(grpc.RpcError) as bad:
                stub.Search(pb.SearchRequest(image=b"garbage", k=1), timeout=10,
                            metadata=(("x-request-id", "bad-7"),))
            assert bad.value.code() == CODE.INVALID_ARGUMENT and _trailing_id(bad.value) == "bad-7"

            text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
            assert 'cdd_requests_total{code="OK",method="Search"} 2.0' in text
            assert 'cdd_requests_total{code="INVALID_ARGUMENT",method="Search"} 1.0' in text
            assert "cdd_gallery_items 20.0" in text
            assert f'bundle_sha256="{gated.manifest.sha256()}"' in text and "cdd_build_info{" in text
            batches = float(re.search(r"^cdd_batch_size_count (\S+)$", text, re.M).group(1))
            assert batches >= 2  # warm-up calls the engine directly; the two Searches went through the batcher
            assert 'cdd_request_duration_seconds_count{method="Search"} 3.0' in text
            assert "cdd_queue_duration_seconds_bucket" in text and "cdd_compute_duration_seconds_sum" in text

            # SERVING once idle (a call slowed past watchdog_s by a busy machine may have flipped it for a tick)
            wait_for(lambda: _health(channel) == health_pb2.HealthCheckResponse.SERVING, "SERVING when idle")
            gated.gate.clear()
            stuck = stub.Search.future(request, timeout=30)
            wait_for(lambda: _health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING, "NOT_SERVING")
            gated.gate.set()
            assert stuck.result().items[0].id == QUERY
            wait_for(lambda: _health(channel) == health_pb2.HealthCheckResponse.SERVING, "SERVING again")
    finally:
        gated.gate.set()
        stop.set()
        runner.join(30)
    assert "engine made no progress" in caplog.text


def test_json_logs_carry_the_request_id(
    tiny_bundle: Path, index_dir: Path, gallery_images: Path
) -> None:
    root = Path(server_module.__file__).resolve().parents[1]
    command = [
        sys.executable, "-m", "serving.server", "--bundle", str(tiny_bundle), "--index", str(index_dir),
        "--port", "0", "--backend", "onnxruntime-cpu", "--log-format", "json",
    ]
    env = {**os.environ, "PYTHONPATH": str(root)}
    process = subprocess.Popen(command, cwd=root, env=env, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        port = None
        while port is None:
            line = process.stderr.readline()
            assert line, f"server exited early: {''.join(lines)}"
            lines.append(line)
            found = re.search(r"serving cdd\.v1\.Retrieval on 127\.0\.0\.1:(\d+)", line)
            port = int(found.group(1)) if found else None
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.RpcError) as bad:
                pb_grpc.RetrievalStub(channel).Search(
                    pb.SearchRequest(image=b"garbage", k=1), timeout=10, metadata=(("x-request-id", "json-1"),)
                )
            assert bad.value.code() == CODE.INVALID_ARGUMENT
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    lines += rest.splitlines()
    entries = [json.loads(line) for line in lines if line.strip()]  # every line is one JSON object
    assert process.returncode == 0
    tagged = [e for e in entries if e["request_id"] == "json-1"]
    assert tagged and "INVALID_ARGUMENT" in tagged[0]["message"] and tagged[0]["level"] == "INFO"
    assert {"time", "level", "logger", "request_id", "message"} <= set(entries[0])


def test_rate_limited_log_counts_what_it_drops(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.rate")
    log = RateLimitedLog(logging.getLogger("test.rate"), per_second=1e-6, burst=3)
    results = [log.log(logging.INFO, "line %d", i) for i in range(10)]
    assert results == [True] * 3 + [False] * 7 and log.suppressed == 7
    assert [r.getMessage() for r in caplog.records] == ["line 0", "line 1", "line 2"]


def test_a_flood_of_garbage_does_not_flood_the_log(
    engine: Engine, tiny_manifest: Manifest, gallery_images: Path, caplog: pytest.LogCaptureFixture
) -> None:
    index = build_index(engine, tiny_manifest, items_from_folder(gallery_images), progress=False)[0]
    service = RetrievalService(engine, index, tiny_manifest)
    server, port = create_server(service, port=0)
    server.start()
    caplog.set_level(logging.INFO, logger="serving.grpc")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.RetrievalStub(channel)
            start = time.monotonic()
            for _ in range(100):
                with pytest.raises(grpc.RpcError):
                    stub.Search(pb.SearchRequest(image=b"garbage", k=1), timeout=10)
            elapsed = time.monotonic() - start
    finally:
        server.stop(None)
        service.close()
    logged = [r for r in caplog.records if r.name == "serving.grpc" and "INVALID_ARGUMENT" in r.getMessage()]
    # serving.grpc_servicer's client-error log: a bucket of burst 20 refilled at 5 lines/s, so at most
    # 20 + 5/s x the flood's duration lines get through (the bucket may start partly drained, never fuller)
    assert 1 <= len(logged) <= 20 + 5.0 * elapsed, (len(logged), elapsed)
