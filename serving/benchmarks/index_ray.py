"""Ingestion on Ray beside the local build, on the same cores and the same split of them.

Both engines ingest the same image folder with the same bundle, backend, batch and engine threads:
the local build (`serving.index.build.build_index`, flat FAISS, ``cores - engine_threads`` decode
threads) and ``cdd-index build --engine ray`` (`serving.index.ray_build`: a local Ray runtime of
``cores`` CPUs, one embedding actor of ``engine_threads`` threads, decode tasks on the other CPUs, rows
upserted into a `milvus-lite server` on loopback). The ratio is Ray's images/s over the local build's.
Ray's time counts from the job's submission to its last result (Ray itself is started before, and its
start-up is reported apart); it includes the Milvus upserts, which the local FAISS build does not make.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from serving.backends import create_engine
from serving.bundle import Manifest
from serving.index.build import build_index, items_from_folder

__all__ = ["bench_ingest_ray", "ray_markdown"]

_LOG = logging.getLogger("serving.benchmarks")


@contextmanager
def _milvus_lite_server(folder: Path, timeout_s: float = 60.0) -> Iterator[str]:
    """A `milvus-lite server` on a free loopback port with its data in ``folder``; yields its URI."""
    from pymilvus import MilvusClient

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    command = [str(Path(sys.executable).with_name("milvus-lite")), "server", "--data-dir", str(folder),
               "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                MilvusClient(uri, timeout=2, dedicated=True).close()  # not pooled: closed at once
                break
            except Exception:  # noqa: BLE001 - not listening yet
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"milvus-lite server on port {port} did not start") from None
                time.sleep(0.3)
        yield uri
    finally:
        process.kill()
        process.wait(10)


def _local(bundle: Path, manifest: Manifest, images: Path, backend: str, batch: int, threads: int,
           workers: int) -> dict[str, Any]:
    engine = create_engine(bundle, manifest, backend=backend, threads=threads)
    _, stats = build_index(engine, manifest, items_from_folder(images), batch_size=batch, workers=workers,
                           progress=False)
    return {"images": stats.images, "seconds": stats.seconds, "images_per_s": stats.images_per_s,
            "engine": engine.describe()}


def _ray(bundle: Path, images: Path, backend: str, batch: int, threads: int, cores: int) -> dict[str, Any]:
    from serving.index.ray_build import RayBuildConfig, import_ray, ray_build
    from serving.index.ray_inputs import item_rows
    from serving.index.ray_session import ray_session

    ray = import_ray()
    with tempfile.TemporaryDirectory(prefix="cdd-bench-ray-") as folder, _milvus_lite_server(
        Path(folder) / "milvus"
    ) as uri:
        tick = time.perf_counter()
        with ray_session(ray, cpus=cores):  # a runtime already up (a caller's cluster) is used as it is
            start_s = time.perf_counter() - tick
            cfg = RayBuildConfig(bundle=bundle, uri=uri, out=Path(folder) / "index", collection="bench",
                                 backend=backend, batch_size=batch, engine_threads=threads, progress=False)
            summary = ray_build(cfg, item_rows(items_from_folder(images)))
    return {"ray_start_s": start_s, **summary.to_dict(), "images_per_s": summary.images_per_s,
            "seconds": summary.seconds}


def bench_ingest_ray(bundle: Path, manifest: Manifest, images: Path, *, backend: str, batch: int,
                     engine_threads: int, cores: int) -> dict[str, Any]:
    """The local build, then the Ray build, of ``images`` with ``engine_threads`` engine threads out of
    ``cores``: {"local", "ray", "ratio" (Ray images/s / local images/s), the settings}."""
    if engine_threads >= cores:
        raise ValueError(f"--ray-engine-threads {engine_threads} must leave a core of {cores} to decoding")
    local = _local(bundle, manifest, images, backend, batch, engine_threads, cores - engine_threads)
    ray = _ray(bundle, images, backend, batch, engine_threads, cores)
    ratio = ray["images_per_s"] / local["images_per_s"] if local["images_per_s"] else 0.0
    _LOG.info("ingest on ray: %.1f images/s vs local %.1f images/s (ratio %.2f)", ray["images_per_s"],
              local["images_per_s"], ratio)
    return {"images_dir": images.as_posix(), "bundle": str(bundle), "batch": batch, "cores": cores,
            "engine_threads": engine_threads, "local": local, "ray": ray, "ratio": ratio}


def ray_markdown(result: dict[str, Any]) -> list[str]:
    """Markdown lines of `bench_ingest_ray`'s result."""
    local, ray = result["local"], result["ray"]
    return [
        "## Ingestion on Ray vs the local build",
        "",
        f"`{result['images_dir']}` with `{result['bundle']}` on {local['engine']['backend']}, batch "
        f"{result['batch']}, {result['engine_threads']} engine thread(s) of {result['cores']} cores, the rest "
        "decoding (local: threads; Ray: tasks, one actor, upserts into a milvus-lite server on loopback). "
        f"Ray's start-up ({ray['ray_start_s']:.1f} s) is not counted.",
        "",
        "| engine | images | seconds | images/s |",
        "| --- | --- | --- | --- |",
        f"| local (FAISS flat) | {local['images']} | {local['seconds']:.2f} | {local['images_per_s']:.1f} |",
        f"| ray (Milvus) | {ray['embedded']} | {ray['seconds']:.2f} | {ray['images_per_s']:.1f} |",
        "",
        f"Ray / local images/s: **{result['ratio']:.2f}** (target >= 0.75 with the realistic bundle on 2 cores).",
        "",
    ]
