"""Dynamic batching: concurrent embedding requests share engine calls run on ``instances`` worker threads.

Callers decode and preprocess in their own threads, then hand uint8 image arrays to ``DynamicBatcher``.
A worker takes the first queued request, keeps collecting for up to ``max_wait_ms`` or until
``max_batch`` images, runs the engine once on the concatenation and gives each caller its own rows.
A request whose deadline passed while it was queued is dropped from the batch (``DeadlineExceeded``).
With ``enabled=False`` (or ``max_batch=1``) every request runs alone: the baseline for benchmarks.

A request may carry a ``query``: once `attach_search` gave the batcher a search function, the worker
passes the embedded rows of every such request in the batch to it in ONE call (one gallery search per
batch, not one per request) and resolves those requests to its results instead of their rows. A query
submitted without pixels is decoded on the worker too (``decode``, per request: a bad image fails only
its own request), so a Search call only parses, checks, queues and waits.

A request may also carry a ``notify`` callable: after every batch the worker calls each distinct
``notify`` ONCE with the futures of that batch's requests that carry it (all already resolved), so code on
an event loop can be woken once per batch instead of once per request (`serving.batch_waiters`).

Overload: the queue holds at most ``max_queue_images`` images; a request that does not fit is refused at
once (``Overloaded``). A request of more than ``max_batch`` images (a large AddItems or SearchBatch) is
queued one chunk at a time, the next chunk only after the previous one ran, so a Search that arrives
meanwhile waits for at most one chunk, not the whole request. A call cancelled by its client (see
`serving.request_context`) drops its queued chunk and frees its caller at once.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.config import ServeConfig
from serving.errors import Cancelled, DeadlineExceeded, InvalidInput, Overloaded, Unavailable
from serving.request_context import current_request

__all__ = ["BatchObserver", "BatcherStats", "DynamicBatcher"]

EmbedFn = Callable[[np.ndarray], np.ndarray]
SearchFn = Callable[[np.ndarray, list[Any]], list[Any]]
"""(float32 (M, D) rows, the M requests' queries) -> M results; runs on the worker thread."""
DecodeFn = Callable[[Any], np.ndarray]
"""A query -> its uint8 (H, W, 3) model input; runs on the worker thread; raises the decoding errors."""
NotifyFn = Callable[[list[Future]], None]
"""Called on the worker thread once per batch with the resolved futures of its requests; must not raise."""
BatchObserver = Callable[[int, float, list[float]], None]
"""Called after every engine call with (images in the call, engine seconds, queue seconds of each request
in it); must be quick and must not raise (it runs on the worker thread)."""


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
    images: np.ndarray | None  # None: one image, decoded from ``query`` on the worker
    deadline: float | None
    enqueued_at: float
    future: Future
    query: Any = None
    notify: NotifyFn | None = None

    @property
    def count(self) -> int:
        return 1 if self.images is None else self.images.shape[0]


_STOP = object()
_DEADLINE_SLACK_S = 0.05
"""A cancel this close to the call's deadline is the deadline passing (gRPC ends the call the same way)."""


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
        *,
        max_queue_images: int = ServeConfig.max_queue_images,
        instances: int = ServeConfig.instances,
        observer: BatchObserver | None = None,
        thread_init: Callable[[], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}; use 1 (or enabled=False) to disable")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        if instances < 1 or max_queue_images < max_batch:
            raise ValueError(
                f"instances must be >= 1 and max_queue_images >= max_batch, got {instances} and "
                f"{max_queue_images} (max_batch {max_batch})"
            )
        self._embed_fn = embed_fn
        self._max_batch = max_batch
        self._max_wait = max_wait_ms / 1000.0
        self._enabled = enabled and max_batch > 1
        self._max_queue = max_queue_images
        self._observer = observer
        self._thread_init = thread_init
        self._search: SearchFn | None = None
        self._decode: DecodeFn | None = None
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self._counts = {"requests": 0, "batches": 0, "images": 0, "largest": 0, "expired": 0}
        self._wait_total = 0.0
        self._queued_images = 0
        self._running = 0
        self._progress_at = time.monotonic()
        self._threads = [
            threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True) for i in range(instances)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def enabled(self) -> bool:
        return self._enabled

    def attach_search(self, search: SearchFn, decode: DecodeFn | None = None) -> None:
        """Let requests submitted with a ``query`` be searched by ``search`` on the worker, per batch, and
        (with ``decode``) queries submitted without pixels be decoded there."""
        self._search, self._decode = search, decode

    @property
    def max_batch(self) -> int:
        return self._max_batch

    @property
    def queued_images(self) -> int:
        """Images waiting for an engine call now."""
        return self._queued_images

    def stalled_s(self) -> float:
        """Seconds the engine has made no progress while work was waiting or running (0 when idle)."""
        with self._lock:
            if self._queued_images == 0 and self._running == 0:
                return 0.0
            return time.monotonic() - self._progress_at

    def submit(self, images: np.ndarray | None, deadline: float | None = None, query: Any = None,
               notify: NotifyFn | None = None) -> Future:
        """Queue uint8 (N, H, W, 3) images, 1 <= N <= max_queue_images; the future resolves to float32
        (N, D) rows, or with a ``query`` (and `attach_search` done) to the search's result; ``notify`` is
        called with it (and the batch's other futures that carry the same ``notify``) once it is. Raises
        Unavailable after ``close()``, Overloaded when the queue has no room for N images, InvalidInput for
        an empty or non-4-D array. ``images`` None: one image that ``query`` carries, decoded on the worker."""
        if images is None and (query is None or self._decode is None):
            raise InvalidInput("a request without pixels needs a query and a batcher with a decoder attached")
        if images is not None and (images.ndim != 4 or images.shape[0] == 0):
            raise InvalidInput(f"batcher expects a non-empty (N, H, W, C) array, got shape {images.shape}")
        count = 1 if images is None else images.shape[0]
        if query is not None and (self._search is None or count != 1):
            raise InvalidInput("a query goes with one image, on a batcher with attach_search done")
        request = _Request(images, deadline, time.monotonic(), Future(), query, notify)
        with self._lock:
            if self._closed:
                raise Unavailable("the server is shutting down and takes no new work; retry elsewhere")
            if self._queued_images + count > self._max_queue:
                raise Overloaded(
                    f"server overloaded: {self._queued_images} images wait for the engine and the queue "
                    f"holds {self._max_queue} (--max-queue-images); {count} more were refused, retry with backoff"
                )
            if self._queued_images == 0 and self._running == 0:
                self._progress_at = request.enqueued_at  # idle -> busy: the stall clock starts now
            self._queued_images += count
            self._queue.put(request)
        return request.future

    def run(self, images: np.ndarray | None, deadline: float | None = None, query: Any = None) -> Any:
        """Submit and wait: float32 (N, D) (or the search result of a one-image ``query``), queued at most
        ``max_batch`` images at a time. Raises
        DeadlineExceeded if ``deadline`` passes first (the queued chunk is then dropped), Cancelled when the
        current call is cancelled, Overloaded, Unavailable after ``close()``, or the engine's error."""
        if images is None or images.shape[0] <= self._max_batch:
            return self._run_one(images, deadline, query)
        parts = [
            self._run_one(images[start : start + self._max_batch], deadline)
            for start in range(0, images.shape[0], self._max_batch)
        ]
        return np.concatenate(parts)

    def _run_one(self, images: np.ndarray | None, deadline: float | None, query: Any = None) -> Any:
        start = time.monotonic()
        if deadline is not None and start >= deadline:
            raise DeadlineExceeded(
                "the deadline had already passed when the request reached the batcher; "
                "give the call a longer deadline"
            )
        call = current_request()
        future = self.submit(images, deadline, query)
        forget = call.on_cancel(future.cancel) if call is not None else None
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return future.result(timeout=timeout)
        except CancelledError:
            # gRPC ends a call at its deadline like a cancel: report which of the two it was
            if deadline is not None and time.monotonic() >= deadline - _DEADLINE_SLACK_S:
                raise self.deadline_error(start) from None
            raise Cancelled("the client cancelled the call; its queued work was dropped") from None
        except DeadlineExceeded:  # set by the worker (expired in the queue); a TimeoutError subclass
            raise
        except TimeoutError:
            future.cancel()
            raise self.deadline_error(start) from None
        finally:
            if forget is not None:
                forget()

    def deadline_error(self, start: float) -> DeadlineExceeded:
        """The error of a request submitted at ``start`` (monotonic seconds) whose deadline passed."""
        waited_ms = (time.monotonic() - start) * 1000.0
        return DeadlineExceeded(
            f"the deadline passed after {waited_ms:.0f} ms waiting for the batcher "
            f"({self._queued_images} images queued, max_wait_ms={self._max_wait * 1000:g}); "
            "give the call a longer deadline or lower the server's --max-wait-ms"
        )

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
        """Refuse new work, finish everything already queued, stop the workers. Idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                for _ in self._threads:
                    self._queue.put(_STOP)
        for thread in self._threads:
            thread.join(timeout)

    def __enter__(self) -> DynamicBatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _loop(self) -> None:
        if self._thread_init is not None:
            self._thread_init()
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
        size = first.count
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
            if size + item.count > self._max_batch:
                return batch, item, False
            batch.append(item)
            size += item.count
        return batch, None, False

    def _run(self, batch: list[_Request]) -> None:
        started = time.monotonic()
        with self._lock:
            self._queued_images -= sum(r.count for r in batch)
            self._running += 1
        try:
            self._run_live(batch, started)
        finally:
            with self._lock:
                self._running -= 1
                self._progress_at = time.monotonic()
            _notify(batch)

    def _run_live(self, batch: list[_Request], started: float) -> None:
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
        live = self._decoded(live)
        if not live:
            return
        images = live[0].images if len(live) == 1 else np.concatenate([r.images for r in live])
        tick = time.monotonic()
        try:
            rows = self._embed(images)
        except Exception as exc:  # any engine failure goes to every caller; the worker keeps running
            for request in live:
                request.future.set_exception(exc)
            return
        if self._observer is not None:
            self._observer(images.shape[0], time.monotonic() - tick, [started - r.enqueued_at for r in live])
        offset, searched = 0, []
        for request in live:
            count = request.count
            if request.query is not None:
                searched.append(offset)
            else:
                request.future.set_result(rows[offset : offset + count].copy())
            offset += count
        if searched:
            self._search_rows(rows[searched], [r for r in live if r.query is not None])

    def _decoded(self, live: list[_Request]) -> list[_Request]:
        """Decode the requests queued without pixels; one that fails gets its error, the rest go on."""
        ready = []
        for request in live:
            if request.images is None:
                assert self._decode is not None
                try:
                    request.images = self._decode(request.query)[None]
                except Exception as exc:  # the image's own error (undecodable, too large) for its caller only
                    request.future.set_exception(exc)
                    continue
            ready.append(request)
        return ready

    def _search_rows(self, rows: np.ndarray, requests: list[_Request]) -> None:
        """One search call for every query of the batch; its failure goes to those callers only."""
        assert self._search is not None
        try:
            results = self._search(rows, [r.query for r in requests])
        except Exception as exc:
            for request in requests:
                request.future.set_exception(exc)
            return
        for request, result in zip(requests, results, strict=True):
            request.future.set_result(result)

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


def _notify(batch: list[_Request]) -> None:
    """Call each distinct ``notify`` of the batch once, with the futures of its requests."""
    groups: dict[NotifyFn, list[Future]] = {}
    for request in batch:
        if request.notify is not None:
            groups.setdefault(request.notify, []).append(request.future)
    for notify, futures in groups.items():
        notify(futures)
