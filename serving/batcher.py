"""Dynamic batching: concurrent embedding requests share engine calls run on one worker thread.

Callers decode and preprocess in their own threads, then hand uint8 image arrays to ``DynamicBatcher``.
The worker takes the first queued request, keeps collecting for up to ``max_wait_ms`` or until
``max_batch`` images, runs the engine once on the concatenation and gives each caller its own rows.
A request whose deadline passed while it was queued is dropped from the batch (``DeadlineExceeded``).
With ``enabled=False`` (or ``max_batch=1``) every request runs alone: the baseline for benchmarks.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from serving.config import ServeConfig
from serving.errors import DeadlineExceeded, InvalidInput, Unavailable

__all__ = ["BatcherStats", "DynamicBatcher"]

EmbedFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class BatcherStats:
    """Counters since start. ``batches`` counts engine calls; ``images`` the rows they embedded;
    ``mean_queue_wait_ms`` is the mean time from submit to the start of the request's batch;
    ``expired`` counts requests dropped because their deadline passed (or the caller gave up) in the queue."""

    enabled: bool
    max_batch: int
    max_wait_ms: float
    requests: int
    batches: int
    images: int
    mean_batch_size: float
    largest_batch: int
    mean_queue_wait_ms: float
    expired: int


@dataclass
class _Request:
    images: np.ndarray
    deadline: float | None
    enqueued_at: float
    future: Future


_STOP = object()


class DynamicBatcher:
    """Batch ``embed_fn`` calls across threads.

    ``embed_fn`` maps uint8 (N, H, W, 3) to float32 (N, D) and is only ever called from the worker thread,
    with 1 <= N <= ``max_batch``. Deadlines are absolute ``time.monotonic()`` seconds."""

    def __init__(
        self,
        embed_fn: EmbedFn,
        max_batch: int = ServeConfig.max_batch,
        max_wait_ms: float = ServeConfig.max_wait_ms,
        enabled: bool = True,
        name: str = "cdd-batcher",
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}; use 1 (or enabled=False) to disable")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self._embed_fn = embed_fn
        self._max_batch = max_batch
        self._max_wait = max_wait_ms / 1000.0
        self._enabled = enabled and max_batch > 1
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self._counts = {"requests": 0, "batches": 0, "images": 0, "largest": 0, "expired": 0}
        self._wait_total = 0.0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def enabled(self) -> bool:
        return self._enabled

    @property
    def max_batch(self) -> int:
        return self._max_batch

    def submit(self, images: np.ndarray, deadline: float | None = None) -> Future:
        """Queue uint8 (N, H, W, 3) images, N >= 1; the future resolves to float32 (N, D) rows.

        Raises Unavailable after ``close()``, InvalidInput for an empty or non-4-D array."""
        if images.ndim != 4 or images.shape[0] == 0:
            raise InvalidInput(f"batcher expects a non-empty (N, H, W, C) array, got shape {images.shape}")
        request = _Request(images, deadline, time.monotonic(), Future())
        with self._lock:
            if self._closed:
                raise Unavailable("the server is shutting down and takes no new work; retry elsewhere")
            self._queue.put(request)
        return request.future

    def run(self, images: np.ndarray, deadline: float | None = None) -> np.ndarray:
        """Submit and wait: float32 (N, D). Raises DeadlineExceeded if ``deadline`` passes first
        (the queued request is then dropped), Unavailable after ``close()``, or the engine's error."""
        start = time.monotonic()
        if deadline is not None and start >= deadline:
            raise DeadlineExceeded(
                "the deadline had already passed when the request reached the batcher; "
                "give the call a longer deadline"
            )
        future = self.submit(images, deadline)
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return future.result(timeout=timeout)
        except DeadlineExceeded:
            raise
        except TimeoutError:
            future.cancel()
            waited_ms = (time.monotonic() - start) * 1000.0
            raise DeadlineExceeded(
                f"the deadline passed after {waited_ms:.0f} ms waiting for the batcher "
                f"({self._queue.qsize()} requests queued, max_wait_ms={self._max_wait * 1000:g}); "
                "give the call a longer deadline or lower the server's --max-wait-ms"
            ) from None

    def stats(self) -> BatcherStats:
        with self._lock:
            counts = dict(self._counts)
            wait_total = self._wait_total
        served = counts["requests"]
        return BatcherStats(
            enabled=self._enabled,
            max_batch=self._max_batch,
            max_wait_ms=self._max_wait * 1000.0,
            requests=served,
            batches=counts["batches"],
            images=counts["images"],
            mean_batch_size=counts["images"] / counts["batches"] if counts["batches"] else 0.0,
            largest_batch=counts["largest"],
            mean_queue_wait_ms=wait_total / served * 1000.0 if served else 0.0,
            expired=counts["expired"],
        )

    def close(self, timeout: float | None = None) -> None:
        """Refuse new work, finish everything already queued, stop the worker. Idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(_STOP)
        self._thread.join(timeout)

    def __enter__(self) -> DynamicBatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _loop(self) -> None:
        pending: _Request | None = None
        while True:
            first = pending if pending is not None else self._queue.get()
            pending = None
            if first is _STOP:
                return
            batch, pending, stop = self._collect(first)
            self._run(batch)
            if stop:
                return

    def _collect(self, first: _Request) -> tuple[list[_Request], _Request | None, bool]:
        """Gather requests after ``first``: (batch, a request that did not fit, whether STOP was seen)."""
        batch = [first]
        size = first.images.shape[0]
        if not self._enabled:
            return batch, None, False
        until = time.monotonic() + self._max_wait
        while size < self._max_batch:
            remaining = until - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return batch, None, True
            if size + item.images.shape[0] > self._max_batch:
                return batch, item, False
            batch.append(item)
            size += item.images.shape[0]
        return batch, None, False

    def _run(self, batch: list[_Request]) -> None:
        started = time.monotonic()
        live: list[_Request] = []
        expired = 0
        for request in batch:
            if not request.future.set_running_or_notify_cancel():
                expired += 1  # the caller stopped waiting (its deadline passed)
            elif request.deadline is not None and started >= request.deadline:
                expired += 1
                request.future.set_exception(
                    DeadlineExceeded("the deadline passed while the request was queued; it was not run")
                )
            else:
                live.append(request)
        with self._lock:
            self._counts["expired"] += expired
            self._counts["requests"] += len(live)
            self._wait_total += sum(started - r.enqueued_at for r in live)
        if not live:
            return
        images = live[0].images if len(live) == 1 else np.concatenate([r.images for r in live])
        try:
            rows = self._embed(images)
        except Exception as exc:  # any engine failure goes to every caller; the worker keeps running
            for request in live:
                request.future.set_exception(exc)
            return
        offset = 0
        for request in live:
            count = request.images.shape[0]
            request.future.set_result(rows[offset : offset + count].copy())
            offset += count

    def _embed(self, images: np.ndarray) -> np.ndarray:
        """Run the engine in chunks of at most ``max_batch`` rows (one oversized request may need several)."""
        parts = []
        for start in range(0, images.shape[0], self._max_batch):
            chunk = images[start : start + self._max_batch]
            out = np.asarray(self._embed_fn(chunk))
            if out.ndim != 2 or out.shape[0] != chunk.shape[0]:
                raise RuntimeError(
                    f"engine returned shape {out.shape} for {chunk.shape[0]} images; expected (N, D) rows"
                )
            parts.append(out)
            with self._lock:
                self._counts["batches"] += 1
                self._counts["images"] += chunk.shape[0]
                self._counts["largest"] = max(self._counts["largest"], chunk.shape[0])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
