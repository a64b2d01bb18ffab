"""`ServeConfig`: the one home of every serving default (stdlib only).

``cdd-serve``'s flags, `create_server`, `DynamicBatcher`, `ServiceLimits` and the image decoder take
their defaults from this class (``ServeConfig.max_batch`` and so on) instead of restating them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["MIB", "ServeConfig"]

MIB = 1024 * 1024
CPU_AFFINITY = ("auto", "off")
"""``--cpu-affinity``: "auto" pins each of N <= cores worker processes to its share of the cores; "off" does not."""


@dataclass(frozen=True)
class ServeConfig:
    """Everything `serving.server.serve` needs; ``cdd-serve`` fills it from its flags.

    ``max_batch`` images per engine call (1 = no batching), ``max_wait_ms`` batch window after the first
    image; ``max_k`` results, ``max_pixels`` (width x height) per decoded image (larger declared sizes are
    refused before any pixel is decoded; 16 MP fits re-ID and product crops with room to spare),
    ``max_call_pixels`` declared pixels summed over all images of one call (so a SearchBatch or AddItems of
    many large images is refused before it takes minutes of CPU),
    ``max_id_bytes`` per gallery id and ``max_metadata_bytes`` per item's metadata or a query's filters
    (keys plus values, UTF-8), ``max_queries`` per SearchBatch, ``max_items`` per AddItems / RemoveItems;
    ``max_message_bytes`` per request / response; ``max_workers`` threads per process for the calls that
    may block (flag ``--rpc-threads``; Search runs on the event loop); ``workers`` server processes
    (`serving.worker_pool`; 0 = one per core, or 1 for a milvus-lite index: `resolve_workers`;
    ``worker_lock_fd`` is set by that parent for its workers: the index folder's lock it holds for them;
    ``cpu_affinity`` "auto" pins each of several workers to its own share of the cores, "off" does not).
    ``tls_cert``/``tls_key`` (PEM) turn TLS on, ``tls_client_ca`` requires client certificates signed by it
    (mutual TLS); ``token`` is the admin bearer token (every call), ``read_token`` the read-only one (no
    AddItems / RemoveItems), see `serving.auth`; without TLS only a loopback ``host`` is accepted unless
    ``allow_plaintext_remote`` (see `serving.tls`). ``grace_s`` seconds in-flight calls get at shutdown;
    ``index_threads`` FAISS OpenMP threads per search (0 = FAISS default); ``index_device`` where a FAISS
    index searches (cpu, cuda, auto); ``snapshot_interval_s`` how often the FAISS write log is folded into
    a snapshot (0 = only at shutdown). ``engine_spin`` lets ONNX Runtime's idle intra-op threads spin-wait
    between operators: off by default here, because in a server the spinning threads take the cores the
    RPC threads need (docs/performance-notes.md has the measurements).
    ``engine_threads`` ONNX Runtime CPU intra-op threads per engine call (0 = its default, one per core);
    with ``instances`` engine workers, instances x engine_threads should not exceed the cores.

    Overload (serving/admission.py, serving/batcher.py): ``max_concurrent_rpcs`` Retrieval calls in flight
    (Stats and health exempt; more get RESOURCE_EXHAUSTED at once; must be below ``max_workers`` so Stats
    and every admitted call that needs a pool thread find one); ``max_queue_images`` images waiting for the
    engine; ``max_deadline_s`` seconds for a call that carries no (or a longer) deadline; ``instances``
    engine worker threads; health turns NOT_SERVING after ``watchdog_s`` seconds without engine progress
    while work waits (0 = no watchdog).
    ``metrics_port`` serves Prometheus ``/metrics`` (None = off); ``log_format`` "text" or "json".
    Raises ValueError for an out-of-range value."""

    bundle: Path
    index: Path
    host: str = "127.0.0.1"
    port: int = 50051
    backend: str = "auto"
    max_batch: int = 16
    max_wait_ms: float = 2.0
    max_k: int = 100
    max_pixels: int = 16_000_000
    max_call_pixels: int = 128_000_000
    max_id_bytes: int = 256
    max_metadata_bytes: int = 4096
    max_queries: int = 64
    max_items: int = 1024
    max_message_bytes: int = 16 * MIB
    max_workers: int = 40
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    token: str | None = None
    read_token: str | None = None
    allow_plaintext_remote: bool = False
    grace_s: float = 10.0
    index_threads: int = 1
    engine_spin: bool = False
    engine_threads: int = 0
    index_device: str = "cpu"
    snapshot_interval_s: float = 300.0
    max_concurrent_rpcs: int = 32
    max_queue_images: int = 256
    max_deadline_s: float = 30.0
    instances: int = 1
    watchdog_s: float = 10.0
    metrics_port: int | None = None
    log_format: str = "text"
    workers: int = 0
    worker_lock_fd: int | None = None
    cpu_affinity: str = "auto"

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together; give both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
        for name in ("max_batch", "max_k", "max_pixels", "max_call_pixels", "max_id_bytes", "max_metadata_bytes",
                     "max_queries", "max_items", "max_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.index_device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"--index-device must be cpu, cuda or auto, got {self.index_device!r}")
        if self.snapshot_interval_s < 0:
            raise ValueError(f"--snapshot-interval-s must be >= 0, got {self.snapshot_interval_s}")
        if self.workers < 0:
            raise ValueError(f"--workers must be >= 0 (0 = one per core), got {self.workers}")
        if self.cpu_affinity not in CPU_AFFINITY:
            raise ValueError(f"--cpu-affinity must be one of {', '.join(CPU_AFFINITY)}, got {self.cpu_affinity!r}")
        if self.engine_threads < 0:
            raise ValueError(f"--engine-threads must be >= 0 (0 = one per core), got {self.engine_threads}")
        if self.max_message_bytes <= 0 or self.max_wait_ms < 0 or self.grace_s < 0:
            raise ValueError("--max-message-mb must be > 0, --max-wait-ms and --grace-s >= 0")
        for name in ("max_concurrent_rpcs", "max_queue_images", "instances"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_concurrent_rpcs >= self.max_workers:
            raise ValueError(
                f"--max-concurrent-rpcs ({self.max_concurrent_rpcs}) must be below --rpc-threads "
                f"({self.max_workers}) so Stats and admitted calls always find a thread; raise --rpc-threads"
            )
        if self.max_queue_images < self.max_batch:
            raise ValueError(
                f"--max-queue-images ({self.max_queue_images}) must be >= --max-batch ({self.max_batch})"
            )
        if self.max_deadline_s <= 0 or self.watchdog_s < 0:
            raise ValueError(f"--max-deadline-s must be > 0 and --watchdog-s >= 0, got {self.max_deadline_s}, "
                             f"{self.watchdog_s}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"--metrics-port must be 0..65535, got {self.metrics_port}")
        if self.log_format not in ("text", "json"):
            raise ValueError(f"--log-format must be text or json, got {self.log_format!r}")
