"""Serving benchmark: N concurrent gRPC clients send Search with real JPEG bytes for a fixed time.

In-process mode starts a real server (`serving.server.create_server` on 127.0.0.1 port 0 over a real
`RetrievalService`) twice: with server-side dynamic batching, and with batching disabled (every request
runs alone). ``target`` mode loads a running server instead (its batching is whatever it was started
with). Each client is a thread with its own channel (`RetrievalClient`). The engine's offline images/s at
the server's batch size is measured on the same engine for comparison (serve QPS / offline images/s).

Client threads share the process (and the CPU) with the in-process server: on a small machine that is
part of what is measured, as it would be for clients on the same host.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from PIL import Image

from serving.backends import Engine
from serving.batcher import DynamicBatcher
from serving.benchmarks.engine import measure_point
from serving.benchmarks.index import faiss_search_threads
from serving.benchmarks.latency import percentiles_ms
from serving.bundle import Manifest
from serving.client import RetrievalClient
from serving.index.gallery import GalleryIndex
from serving.server import create_server
from serving.service import RetrievalService

__all__ = ["ServeBenchConfig", "bench_serve", "query_jpegs", "run_load"]

_LOG = logging.getLogger("serving.benchmarks")
_JPEG_QUALITY = 90


@dataclass(frozen=True)
class ServeBenchConfig:
    """``clients`` concurrent callers for ``seconds`` per mode, top-``k`` searches; server batching with
    ``max_batch`` images / ``max_wait_ms``; ``offline_seconds`` to time the engine alone; ``timeout`` per
    call (s); ``payloads`` distinct JPEGs cycled by the clients (seeded by ``seed``); FAISS OpenMP threads
    of the in-process server while loaded: ``search_threads`` (None = FAISS's default), see
    `faiss_search_threads`."""

    clients: int = 16
    seconds: float = 10.0
    max_batch: int = 16
    max_wait_ms: float = 5.0
    k: int = 10
    offline_seconds: float = 2.0
    search_threads: int | None = 1
    timeout: float = 30.0
    payloads: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("clients", "max_batch", "k", "payloads"):
            if getattr(self, name) < 1:
                raise ValueError(f"serve benchmark: {name} must be >= 1, found {getattr(self, name)}")
        if self.seconds <= 0 or self.offline_seconds <= 0 or self.max_wait_ms < 0:
            raise ValueError("serve benchmark: seconds and offline seconds must be > 0, max_wait_ms >= 0")


def _synthetic_picture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A blocky picture with noise (compresses like a photo crop, unlike pure noise); uint8 (h, w, 3)."""
    blocks = rng.integers(0, 256, size=(8, 4, 3)).astype(np.float32)
    picture = np.kron(blocks, np.ones((height // 8 + 1, width // 4 + 1, 1), dtype=np.float32))[
        :height, :width
    ]
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


def _client(
    target: str,
    payloads: Sequence[bytes],
    offset: int,
    cfg: ServeBenchConfig,
    start: threading.Barrier,
    window: dict[str, float],
    out: list[tuple[float, float]],
    errors: Counter,
) -> None:
    """One caller: a warm-up call, then Search in a loop until the shared window closes; appends
    (latency s, completion time) to ``out`` and counts failures by status in ``errors`` (its own). A failure
    before the start breaks the barrier so that nobody waits for this caller."""
    try:
        client = RetrievalClient(target, timeout=cfg.timeout)
    except Exception:
        start.abort()
        raise
    with client:
        try:
            client.search(payloads[offset % len(payloads)], k=cfg.k)
        except grpc.RpcError as exc:
            errors[f"warmup {exc.code().name}"] += 1
        try:
            start.wait()
        except threading.BrokenBarrierError:
            return
        stop = window["start"] + cfg.seconds
        i = offset
        while time.perf_counter() < stop:
            tick = time.perf_counter()
            try:
                client.search(payloads[i % len(payloads)], k=cfg.k)
            except grpc.RpcError as exc:
                errors[exc.code().name] += 1
            else:
                done = time.perf_counter()
                out.append((done - tick, done))
            i += 1


def run_load(target: str, payloads: Sequence[bytes], cfg: ServeBenchConfig) -> dict[str, Any]:
    """Run ``cfg.clients`` callers against ``target`` for ``cfg.seconds``: {"clients", "seconds" (start to
    last completion), "requests", "errors" {status: n}, "qps", "latency" (`percentiles_ms`)}.
    Raises RuntimeError when no call succeeded (the first error named)."""
    window: dict[str, float] = {}
    start = threading.Barrier(
        cfg.clients + 1, action=lambda: window.__setitem__("start", time.perf_counter())
    )
    per_client: list[list[tuple[float, float]]] = [[] for _ in range(cfg.clients)]
    per_client_errors: list[Counter] = [Counter() for _ in range(cfg.clients)]
    threads = [
        threading.Thread(
            target=_client,
            args=(target, payloads, i * 7, cfg, start, window, per_client[i], per_client_errors[i]),
            name=f"bench-client-{i}",
            daemon=True,
        )
        for i in range(cfg.clients)
    ]
    for thread in threads:
        thread.start()
    try:
        start.wait(timeout=cfg.timeout + 30.0)
    except threading.BrokenBarrierError:
        start.abort()
        for thread in threads:
            thread.join()
        errors = sum(per_client_errors, Counter())
        raise RuntimeError(
            f"the load generator could not start {cfg.clients} clients against {target} (warm-up errors: "
            f"{dict(errors) or 'none recorded'}); check that the server is up"
        ) from None
    for thread in threads:
        thread.join()
    errors = sum(per_client_errors, Counter())
    done = [item for samples in per_client for item in samples]
    if not done:
        raise RuntimeError(f"no Search call to {target} succeeded; errors: {dict(errors) or 'none recorded'}")
    elapsed = max(end for _, end in done) - window["start"]
    return {
        "clients": cfg.clients,
        "seconds": elapsed,
        "requests": len(done),
        "errors": dict(errors),
        "qps": len(done) / elapsed,
        "latency": percentiles_ms([latency for latency, _ in done]),
    }


def _serve_mode(
    engine: Engine,
    index: GalleryIndex,
    manifest: Manifest,
    payloads: Sequence[bytes],
    cfg: ServeBenchConfig,
    batching: bool,
) -> dict[str, Any]:
    """Start an in-process server (batching on or off), load it, stop it; the load result + batcher stats."""
    max_batch = min(cfg.max_batch, manifest.batch.max)
    batcher = DynamicBatcher(engine.embed, max_batch=max_batch, max_wait_ms=cfg.max_wait_ms, enabled=batching)
    service = RetrievalService(engine, index, manifest, batcher=batcher)
    server, port = create_server(service, port=0, host="127.0.0.1", max_workers=cfg.clients + 4)
    server.start()
    try:
        service.warmup()
        with faiss_search_threads(cfg.search_threads):
            result = run_load(f"127.0.0.1:{port}", payloads, cfg)
    finally:
        server.stop(1.0).wait()
        service.close()
    result["batching"] = asdict(batcher.stats())
    _LOG.info(
        "serve %s: %.1f QPS, p50 %.1f ms, p99 %.1f ms, mean batch %.2f",
        "batched" if batching else "unbatched",
        result["qps"],
        result["latency"]["p50_ms"],
        result["latency"]["p99_ms"],
        result["batching"]["mean_batch_size"],
    )
    return result


def bench_serve(
    engine: Engine,
    manifest: Manifest,
    cfg: ServeBenchConfig,
    *,
    index: GalleryIndex | None = None,
    target: str | None = None,
    sources: Sequence[Path] = (),
) -> dict[str, Any]:
    """Serve QPS and latency with and without server-side batching (in-process, needs ``index``) or against
    ``target`` (one mode, "target"), plus the engine's offline images/s at the server batch size and the
    ratios serve QPS / offline images/s. Raises ValueError when neither or both of index/target are given."""
    if (index is None) == (target is None):
        raise ValueError("serve benchmark: give exactly one of an index (in-process server) or --target")
    batch = min(cfg.max_batch, manifest.batch.max)
    payloads = query_jpegs(manifest, cfg.payloads, cfg.seed, sources)
    offline = measure_point(engine, batch, warmup=2, seconds=cfg.offline_seconds, seed=cfg.seed)
    if target is not None:
        modes = {"target": run_load(target, payloads, cfg)}
    else:
        modes = {
            "batched": _serve_mode(engine, index, manifest, payloads, cfg, batching=True),
            "unbatched": _serve_mode(engine, index, manifest, payloads, cfg, batching=False),
        }
    ratios = {f"{mode}_qps_over_offline": r["qps"] / offline["images_per_s"] for mode, r in modes.items()}
    if "batched" in modes:
        ratios["batched_qps_over_unbatched"] = modes["batched"]["qps"] / modes["unbatched"]["qps"]
    return {
        "target": target or "in-process (127.0.0.1, port 0)",
        "config": {**asdict(cfg), "max_batch": batch},
        "engine": engine.describe(),
        "gallery_size": len(index) if index is not None else None,
        "payload_bytes_mean": float(np.mean([len(p) for p in payloads])),
        "payload_source": "folder images resized to the input size" if sources else "synthetic pictures",
        "offline": offline,
        "modes": modes,
        "ratios": ratios,
    }
