"""`ServeConfig`: the one home of every serving default (stdlib only).

``cdd-serve``'s flags, `create_server`, `DynamicBatcher`, `ServiceLimits` and the image decoder take
their defaults from this class (``ServeConfig.max_batch`` and so on) instead of restating them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["MIB", "ServeConfig"]

MIB = 1024 * 1024


@dataclass(frozen=True)
class ServeConfig:
    """Everything `serving.server.serve` needs; ``cdd-serve`` fills it from its flags.

    ``max_batch`` images per engine call (1 = no batching), ``max_wait_ms`` batch window after the first
    image; ``max_k`` results, ``max_pixels`` (width x height) per decoded image (larger declared sizes are
    refused before any pixel is decoded), ``max_queries`` per
    SearchBatch, ``max_items`` per AddItems / RemoveItems; ``max_message_bytes`` per request / response;
    ``max_workers`` RPC threads; ``grace_s`` seconds in-flight calls get at shutdown; ``index_threads``
    FAISS OpenMP threads per search (0 = FAISS default). Raises ValueError for an out-of-range value."""

    bundle: Path
    index: Path
    host: str = "127.0.0.1"
    port: int = 50051
    backend: str = "auto"
    max_batch: int = 16
    max_wait_ms: float = 2.0
    max_k: int = 100
    max_pixels: int = 40_000_000
    max_queries: int = 64
    max_items: int = 1024
    max_message_bytes: int = 16 * MIB
    max_workers: int = 16
    tls_cert: Path | None = None
    tls_key: Path | None = None
    token: str | None = None
    grace_s: float = 10.0
    index_threads: int = 1

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together; give both or neither")
        for name in ("max_batch", "max_k", "max_pixels", "max_queries", "max_items", "max_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_message_bytes <= 0 or self.max_wait_ms < 0 or self.grace_s < 0:
            raise ValueError("--max-message-mb must be > 0, --max-wait-ms and --grace-s >= 0")
