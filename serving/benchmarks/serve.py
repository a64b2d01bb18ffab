"""Serving benchmark: servers in their own processes, driven by a load generator in other processes.

Servers, measured one after another in the same run with the same generator and payload sizes:

- ``bare (sync)``: `serving.benchmarks.bare_server`, the same proto and thread pool whose Search returns a
  constant: the floor of a Python gRPC server on this machine; ``bare (aio)``: the same on ``grpc.aio``;
- ``LABEL batched`` / ``LABEL unbatched``: ``cdd-serve`` (``python -m serving.server``) on each bundle
  (the demo bundle and, when given, a realistic-cost one) with server-side batching on / off, with
  ``workers`` processes (the load generator round-robins over their ports); with more than one, the
  first bundle also as one process (``LABEL batched, 1 process``); and the last bundle batched with
  ``instances`` engine workers (``LABEL batched, N instances``).

Each gets closed-loop load at every concurrency level (QPS, p50/p99, server CPU and context switches
per request from ``/proc``, summed over the server's processes, mean batch size from Stats, the
generator's CPU share). On the last bundle's batched server,
an open-loop run at ``saturation_fraction`` of its best QPS gives the tail ratio p99 / p50. An overload
probe drives a demo server whose call cap is tiny far past it and checks that the excess gets
RESOURCE_EXHAUSTED, nothing else fails, and ``/metrics`` counted every call the generator sent.
The gallery of each cdd-serve is ``gallery_size`` random unit vectors (search cost of a real flat
gallery of that size; the answers are not checked here).
"""

from __future__ import annotations

import io
import logging
import os
import re
import tempfile
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from PIL import Image

from serving._proto import retrieval_pb2 as pb
from serving._proto import retrieval_pb2_grpc as pb_grpc
from serving.benchmarks.engine import measure_point, open_first
from serving.benchmarks.load_generator import LoadSpec, run_load
from serving.benchmarks.server_process import ServerProcess
from serving.bundle import Manifest, load_bundle
from serving.config import ServeConfig
from serving.index.gallery import GalleryIndex

__all__ = ["ServeBenchConfig", "bench_serve", "bench_target", "query_jpegs", "random_gallery"]

_LOG = logging.getLogger("serving.benchmarks")
_JPEG_QUALITY = 90


@dataclass(frozen=True)
class ServeBenchConfig:
    """Closed-loop load at each of ``concurrency`` for ``seconds``; cdd-serve batching up to ``max_batch``
    within ``max_wait_ms``; top-``k``; ``offline_seconds`` timing each engine alone; ``gallery_size``
    items; ``payloads`` distinct JPEGs (seeded by ``seed``); ``load_processes`` generator processes;
    open loop at ``saturation_fraction`` of the best QPS; overload probe: ``overload_clients`` callers
    against a cap of ``overload_cap`` calls; the last bundle also batched with ``instances`` engine
    workers (0 or 1 = not measured); cdd-serve runs ``workers`` processes (0 = one per core);
    ``timeout`` s per call."""

    concurrency: tuple[int, ...] = (1, 4, 16)
    seconds: float = 5.0
    max_batch: int = ServeConfig.max_batch
    max_wait_ms: float = ServeConfig.max_wait_ms
    k: int = 10
    offline_seconds: float = 3.0
    gallery_size: int = 1280
    payloads: int = 64
    load_processes: int = 1
    saturation_fraction: float = 0.8
    overload_clients: int = 64
    overload_cap: int = 4
    instances: int = 2
    workers: int = 0
    cpu_affinity: str = ServeConfig.cpu_affinity
    timeout: float = 60.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.concurrency or min(self.concurrency) < 1:
            raise ValueError(f"serve benchmark: concurrency levels must be >= 1, found {self.concurrency}")
        for name in ("max_batch", "k", "payloads", "gallery_size", "load_processes", "overload_cap"):
            if getattr(self, name) < 1:
                raise ValueError(f"serve benchmark: {name} must be >= 1, found {getattr(self, name)}")
        if self.seconds <= 0 or self.offline_seconds <= 0 or self.max_wait_ms < 0:
            raise ValueError("serve benchmark: seconds and offline seconds must be > 0, max_wait_ms >= 0")
        if not 0 < self.saturation_fraction <= 1 or self.overload_clients <= self.overload_cap:
            raise ValueError("serve benchmark: saturation_fraction in (0, 1], overload_clients > overload_cap")


def _synthetic_picture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A blocky picture with noise (compresses like a photo crop, unlike pure noise); uint8 (h, w, 3)."""
    blocks = rng.integers(0, 256, size=(8, 4, 3)).astype(np.float32)
    picture = np.kron(blocks, np.ones((height // 8 + 1, width // 4 + 1, 1), dtype=np.float32))[:height, :width]
    return np.clip(picture + rng.normal(0.0, 8.0, picture.shape), 0, 255).astype(np.uint8)


def query_jpegs(manifest: Manifest, count: int, seed: int, sources: Sequence[Path] = ()) -> list[bytes]:
    """``count`` JPEG payloads at the manifest's input size: the ``sources`` images (cycled, resized)
    when given, else synthetic pictures seeded by ``seed``."""
    height, width = manifest.input.height, manifest.input.width
    rng = np.random.default_rng(seed)
    payloads = []
    for i in range(count):
        if sources:
            with Image.open(sources[i % len(sources)]) as opened:
                image = opened.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
        else:
            image = Image.fromarray(_synthetic_picture(rng, height, width))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=_JPEG_QUALITY)
        payloads.append(buffer.getvalue())
    return payloads


def random_gallery(manifest: Manifest, size: int, seed: int, out: Path) -> Path:
    """A flat index of ``size`` random unit vectors stamped with the bundle, metadata like cdd-index's."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(size, manifest.output.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = GalleryIndex(manifest.output.dim, "flat", metric=manifest.metric, bundle_sha256=manifest.sha256())
    names = [f"{i // 8:04d}_c{i % 6 + 1}s1_{i:06d}_00.jpg" for i in range(size)]
    metadata = [{"path": n, "file": n, "label": i // 8, "camera": i % 6} for i, n in enumerate(names)]
    index.add(names, vectors, metadata)
    index.save(out)
    return out


def _batch_counters(target: str) -> tuple[int, int] | None:
    """(engine calls, images) from the Stats of every address in ``target``, summed; None for a server
    without Stats (bare)."""
    batches = images = 0
    for address in target.split(","):
        try:
            with grpc.insecure_channel(address) as channel:
                stats = pb_grpc.RetrievalStub(channel).Stats(pb.StatsRequest(), timeout=10)
        except grpc.RpcError:
            return None
        batches, images = batches + stats.batching.batches, images + stats.batching.images
    return batches, images


def _measure(server: ServerProcess, payloads: Sequence[bytes], clients: int, cfg: ServeBenchConfig,
             rate: float | None = None) -> dict[str, Any]:
    """One load run against ``server`` with its CPU time and batch counters read around the window."""
    target = server.target
    marks: dict[str, Any] = {}

    def mark(when: str) -> Callable[[], None]:
        return lambda: marks.update({f"{when}_cpu": server.cpu_seconds(), f"{when}_batches": _batch_counters(target),
                                     f"{when}_switches": server.context_switches()})

    spec = LoadSpec(target, clients, cfg.seconds, cfg.k, cfg.timeout, rate, cfg.load_processes)
    result = run_load(spec, payloads, on_start=mark("start"), on_end=mark("end"))
    if marks["start_cpu"] is not None and marks["end_cpu"] is not None:
        cpu = marks["end_cpu"] - marks["start_cpu"]
        result["server_cpu_s"] = cpu
        result["server_cpu_ms_per_request"] = cpu * 1000.0 / result["requests"] if result["requests"] else None
    if marks["start_switches"] is not None and marks["end_switches"] is not None and result["requests"]:
        result["server_switches_per_request"] = {
            kind: (marks["end_switches"][i] - marks["start_switches"][i]) / result["requests"]
            for i, kind in enumerate(("voluntary", "involuntary"))
        }
    before, after = marks["start_batches"], marks["end_batches"]
    calls = after[0] - before[0] if before and after else 0
    result["mean_batch"] = (after[1] - before[1]) / calls if calls else None
    latency = result["latency"] or {}
    _LOG.info("serve %s, %d clients%s: %.1f QPS, p50 %.1f ms, p99 %.1f ms, codes %s", server.name, clients,
              f", open loop {rate:.1f}/s" if rate else "", result["qps"], latency.get("p50_ms", float("nan")),
              latency.get("p99_ms", float("nan")), result["codes"])
    return result


def _workers(cfg: ServeBenchConfig) -> int:
    return cfg.workers or os.cpu_count() or 1


def _cdd_serve(bundle: Path, index: Path, cfg: ServeBenchConfig, batch: int, name: str, backend: str,
               cap: int, metrics: bool = False, instances: int = 1, workers: int = 1) -> ServerProcess:
    args = ["--bundle", str(bundle), "--index", str(index), "--port", "0", "--backend", backend,
            "--instances", str(instances), "--max-batch", str(batch), "--max-wait-ms", f"{cfg.max_wait_ms:g}",
            "--max-concurrent-rpcs", str(cap), "--rpc-threads", str(max(cap + 8, 32)), "--workers", str(workers),
            "--max-deadline-s", f"{cfg.timeout:g}", "--cpu-affinity", cfg.cpu_affinity, "--log-level", "INFO"]
    return ServerProcess("serving.server", [*args, *(["--metrics-port", "0"] if metrics else [])], name, workers)


def _bare(cfg: ServeBenchConfig, aio: bool) -> ServerProcess:
    args = ["--k", str(cfg.k), "--max-workers", str(max(cfg.concurrency) + 8), *(["--aio"] if aio else [])]
    return ServerProcess("serving.benchmarks.bare_server", args, "bare (aio)" if aio else "bare (sync)")


def _rows(server: ServerProcess, payloads: Sequence[bytes], cfg: ServeBenchConfig,
          tail: dict[str, Any] | None = None) -> dict[str, Any]:
    """Closed-loop rows at every concurrency level; with ``tail`` (a dict to fill), then the open-loop run
    at ``saturation_fraction`` of the best of those rows, on the same server process."""
    with server:
        rows = {str(c): _measure(server, payloads, c, cfg) for c in cfg.concurrency}
        if tail is not None:
            rate = max(row["qps"] for row in rows.values()) * cfg.saturation_fraction
            run = _measure(server, payloads, max(cfg.concurrency) * 4, cfg, rate=rate)
            latency = run["latency"]
            tail.update(run, rate=rate, p99_over_p50=latency["p99_ms"] / latency["p50_ms"] if latency else None)
    return rows


def _metric_total(text: str, method: str) -> dict[str, float]:
    pattern = re.compile(rf'^cdd_requests_total{{code="(\w+)",method="{method}"}} (\S+)$', re.M)
    return {code: float(value) for code, value in pattern.findall(text)}


def _overload_probe(bundle: Path, index: Path, payloads: Sequence[bytes], cfg: ServeBenchConfig,
                    backend: str) -> dict[str, Any]:
    """Drive a server capped at ``overload_cap`` calls with ``overload_clients`` callers: codes seen by
    the generator vs ``/metrics``' counts."""
    server = _cdd_serve(bundle, index, cfg, cfg.max_batch, "overload probe", backend, cfg.overload_cap, True)
    with server:
        spec = LoadSpec(server.target, cfg.overload_clients, min(cfg.seconds, 3.0), cfg.k,
                        cfg.timeout, None, cfg.load_processes)
        run = run_load(spec, payloads)
        url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
    metrics = _metric_total(text, "Search")
    sent: dict[str, int] = {}
    for codes in (run["codes"], run["warmup_codes"]):
        for code, n in codes.items():
            sent[code] = sent.get(code, 0) + n
    result = {"clients": cfg.overload_clients, "cap": cfg.overload_cap, "generator_codes": sent,
              "metrics_codes": metrics, "qps": run["qps"]}
    result["metrics_match"] = {c: float(n) for c, n in sent.items()} == metrics
    _LOG.info("overload probe: generator saw %s, /metrics counted %s", sent, metrics)
    return result


def _offline(bundle: Path, manifest: Manifest, backend: str, threads: int, cfg: ServeBenchConfig) -> dict:
    # The engine as cdd-serve runs it (ServeConfig.engine_spin), so the ratio measures the server, not a
    # different engine setting.
    engine, _, _ = open_first(bundle, manifest, [backend], threads, spin=ServeConfig.engine_spin)
    batch = min(cfg.max_batch, manifest.batch.max)
    return measure_point(engine, batch, warmup=2, seconds=cfg.offline_seconds, seed=cfg.seed)


def _peak(rows: dict[str, Any]) -> float:
    return max(row["qps"] for row in rows.values())


def bench_serve(bundles: dict[str, Path], cfg: ServeBenchConfig, *, backend: str = "onnxruntime-cpu",
                threads: int = 1, sources: Sequence[Path] = ()) -> dict[str, Any]:
    """The benchmark above for ``bundles`` {label: bundle dir}; the first is the demo bundle (bare servers
    and the overload probe use its payloads), the last gets the tail run. Returns a JSON-able dict."""
    if not bundles:
        raise ValueError("serve benchmark: give at least one bundle")
    manifests = {label: load_bundle(path) for label, path in bundles.items()}
    payloads = {label: query_jpegs(m, cfg.payloads, cfg.seed, sources) for label, m in manifests.items()}
    first, last = next(iter(bundles)), list(bundles)[-1]
    servers: dict[str, Any] = {}
    for aio in (False, True):
        bare = _bare(cfg, aio)
        servers[bare.name] = {"kind": "bare", "bundle": None, "rows": _rows(bare, payloads[first], cfg)}
    offline: dict[str, Any] = {}
    tail: dict[str, Any] = {"bundle": last}
    with tempfile.TemporaryDirectory(prefix="cdd-bench-serve-") as tmp:
        indexes = {label: random_gallery(m, cfg.gallery_size, cfg.seed, Path(tmp) / label)
                   for label, m in manifests.items()}
        for label, bundle in bundles.items():
            offline[label] = _offline(bundle, manifests[label], backend, threads, cfg)
            batch = min(cfg.max_batch, manifests[label].batch.max)
            cap = max(cfg.concurrency) * 4 + 8
            for mode, size in (("batched", batch), ("unbatched", 1)):
                server = _cdd_serve(bundle, indexes[label], cfg, size, f"{label} {mode}", backend, cap,
                                    workers=_workers(cfg))
                rows = _rows(server, payloads[label], cfg, tail if (label, mode) == (last, "batched") else None)
                servers[server.name] = {"kind": mode, "bundle": label, "rows": rows, "workers": _workers(cfg)}
            if label == first and _workers(cfg) > 1:
                server = _cdd_serve(bundle, indexes[label], cfg, batch, f"{label} batched, 1 process", backend, cap)
                servers[server.name] = {"kind": "batched", "bundle": label, "rows": _rows(server, payloads[label], cfg),
                                        "workers": 1}
            if label == last and cfg.instances > 1:
                server = _cdd_serve(bundle, indexes[label], cfg, batch, f"{label} batched, {cfg.instances} instances",
                                    backend, cap, instances=cfg.instances)
                servers[server.name] = {"kind": "batched", "bundle": label, "rows": _rows(server, payloads[label], cfg)}
        probe = _overload_probe(bundles[first], indexes[first], payloads[first], cfg, backend)
    return {
        "config": asdict(cfg),
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        "backend": backend,
        "threads": threads,
        "bundles": {label: {"path": str(path), "name": manifests[label].name,
                            "input": f"{manifests[label].input.height}x{manifests[label].input.width}",
                            "payload_bytes_mean": float(np.mean([len(p) for p in payloads[label]]))}
                    for label, path in bundles.items()},
        "payload_source": "folder images resized to the input size" if sources else "synthetic pictures",
        "offline": offline,
        "servers": servers,
        "tail": tail,
        "overload": probe,
        "ratios": _ratios(servers, offline, tail, first, last),
    }


def _ratios(servers: dict[str, Any], offline: dict[str, Any], tail: dict[str, Any], first: str,
            last: str) -> dict[str, float | None]:
    bare = _peak(servers["bare (sync)"]["rows"])
    ratios: dict[str, float | None] = {
        "aio_bare_over_sync_bare": _peak(servers["bare (aio)"]["rows"]) / bare,
        f"{first}_over_bare": _peak(servers[f"{first} batched"]["rows"]) / bare,
    }
    for label in offline:
        batched, unbatched = servers[f"{label} batched"]["rows"], servers[f"{label} unbatched"]["rows"]
        ratios[f"{label}_over_offline"] = _peak(batched) / offline[label]["images_per_s"]
        ratios[f"{label}_batched_over_unbatched"] = _peak(batched) / _peak(unbatched)
    ratios[f"{last}_p99_over_p50_at_saturation_fraction"] = tail["p99_over_p50"]
    return ratios


def bench_target(target: str, manifest: Manifest, cfg: ServeBenchConfig,
                 sources: Sequence[Path] = ()) -> dict[str, Any]:
    """Closed-loop load at each concurrency level against a running server ``target`` (its codes, QPS,
    latency; no server CPU or offline comparison)."""
    payloads = query_jpegs(manifest, cfg.payloads, cfg.seed, sources)
    rows = {}
    for clients in cfg.concurrency:
        spec = LoadSpec(target, clients, cfg.seconds, cfg.k, cfg.timeout, None, cfg.load_processes)
        rows[str(clients)] = run_load(spec, payloads)
    return {"config": asdict(cfg), "target": target, "rows": rows}
