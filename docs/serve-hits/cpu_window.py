"""Server CPU per Search of ONE cdd-serve process, per thread, over a fixed window under steady load.

Usage (from a checkout with its .venv and bundles/demo, and a gallery made by the serve benchmark's
``random_gallery``): ``python docs/serve-hits/cpu_window.py CHECKOUT GALLERY PORT LABEL OUT.json``.

Starts ``python -m serving.server --workers 1`` of CHECKOUT (the benchmark's cdd-serve flags), drives it
with ``cdd-bench serve --target`` (16 callers, 2 generator processes, 35 s), and between 8 s and 28 s
into the load reads the server's CPU time per thread from /proc and the images its batcher embedded
(Stats): CPU per request = CPU seconds / images (one image per Search). Python thread names come from
``py-spy dump`` (this interpreter's py-spy), threads without Python frames (ONNX Runtime, gRPC) by their
/proc name. Writes OUT.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

WINDOW_START_S, WINDOW_S = 8.0, 20.0
SERVER_FLAGS = ["--backend", "onnxruntime-cpu", "--instances", "1", "--max-batch", "16", "--max-wait-ms", "5",
                "--max-concurrent-rpcs", "72", "--rpc-threads", "80", "--workers", "1", "--max-deadline-s", "60",
                "--log-level", "WARNING"]


def _threads(pid: int) -> dict[str, tuple[str, float]]:
    """{tid: (name, CPU seconds)} of every thread of ``pid``."""
    tick, out = os.sysconf("SC_CLK_TCK"), {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        out[tid] = (stat[stat.index("(") + 1: stat.rindex(")")], (int(fields[11]) + int(fields[12])) / tick)
    return out


def _python_names(pid: int) -> dict[str, str]:
    """{tid: Python thread name} from ``py-spy dump`` (threads without Python frames are left out)."""
    spy = Path(sys.executable).with_name("py-spy")
    try:
        text = subprocess.run([str(spy), "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    names = {}
    for line in text.splitlines():
        if line.startswith("Thread ") and '"' in line:
            names[line.split()[1]] = line.split('"')[1]
    return names


def _images(target: str) -> int:
    from serving._proto import retrieval_pb2 as pb
    from serving._proto import retrieval_pb2_grpc as pb_grpc

    with grpc.insecure_channel(target) as channel:
        return int(pb_grpc.RetrievalStub(channel).Stats(pb.StatsRequest(), timeout=10).batching.images)


def main(checkout: str, gallery: str, port: str, label: str, out: str) -> None:
    python, target = f"{checkout}/.venv/bin/python", f"127.0.0.1:{port}"
    server = subprocess.Popen([python, "-m", "serving.server", "--bundle", "bundles/demo", "--index", gallery,
                               "--port", port, *SERVER_FLAGS], cwd=checkout)
    try:
        for _ in range(120):
            try:
                _images(target)
                break
            except grpc.RpcError:
                time.sleep(0.5)
        with tempfile.TemporaryDirectory() as tmp:
            load = subprocess.Popen([python, "-m", "serving.benchmarks", "serve", "--bundle", "bundles/demo",
                                     "--target", target, "--concurrency", "16", "--serve-seconds", "35",
                                     "--load-processes", "2", "--out", tmp], cwd=checkout,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(WINDOW_START_S)
            before, images_before, start = _threads(server.pid), _images(target), time.monotonic()
            load_start = os.getloadavg()[0]
            time.sleep(WINDOW_S)
            after, images_after, seconds = _threads(server.pid), _images(target), time.monotonic() - start
            load_end = os.getloadavg()[0]
            names = _python_names(server.pid)
            load.wait()
            rows = json.loads((Path(tmp) / "serve.json").read_text())["serve"]["rows"]["16"]
    finally:
        server.terminate()
        server.wait()
    images = images_after - images_before
    per_thread = sorted(((after[t][0], t, after[t][1] - before.get(t, ("", 0.0))[1]) for t in after),
                        key=lambda row: -row[2])
    cpu = sum(row[2] for row in per_thread)
    result = {
        "label": label, "checkout": checkout, "window_s": round(seconds, 2), "images": images,
        "qps_in_window": images / seconds, "server_cpu_s": cpu, "server_cpu_ms_per_request": 1000.0 * cpu / images,
        "threads_cpu_ms_per_request": [{"tid": tid, "comm": comm, "python_thread": names.get(tid),
                                        "ms": 1000.0 * value / images}
                                       for comm, tid, value in per_thread if value > 0],
        "load_generator_run": {"qps": rows["qps"], "p50_ms": rows["latency"]["p50_ms"],
                               "p99_ms": rows["latency"]["p99_ms"], "codes": rows["codes"]},
        "load_average": [load_start, load_end],
    }
    Path(out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"{label}: {result['server_cpu_ms_per_request']:.3f} ms CPU / request, {result['qps_in_window']:.0f} QPS")


if __name__ == "__main__":
    main(*sys.argv[1:6])
