"""`RetrievalServicer`: the thin grpc.aio adapter over `RetrievalService` (cdd.v1.Retrieval).

Every method is a coroutine on the server's event loop. Search never leaves the loop while it waits: it
checks the request (`RetrievalService.search_query`), queues it into the batch worker and awaits the
answer (`serving.batch_waiters`). The calls that decode several images or write to the disk (SearchBatch,
Embed, AddItems, RemoveItems) and Stats (which may read the shared write log) run in a small thread pool,
so the loop never blocks on decoding or fsync; a cancelled call cancels its `RequestContext` there and
keeps its admission slot until that thread stops.

It converts messages to and from plain Python, turns the call's deadline (capped at the server's
``max_deadline_s``, which also applies to calls without one) into an absolute ``time.monotonic()``
deadline for the service, and maps every domain error to a status code in ONE table
(`STATUS_FOR`). An error not in the table is a server bug: it is logged with its traceback and the client
gets INTERNAL without internals. Client errors are logged at a rate limit (`RateLimitedLog`).
Metadata values leave the server as strings: a ``str`` as is, anything
else JSON-encoded (compact, sorted keys), see `wire_metadata`.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from typing import Any, NoReturn, TypeVar

import grpc
import numpy as np

from serving._proto import retrieval_pb2 as pb
from serving.batch_waiters import BatchWaiters
from serving.config import ServeConfig
from serving.errors import (
    Cancelled,
    DeadlineExceeded,
    InvalidInput,
    Overloaded,
    StorageFailed,
    StorageFull,
    TooLarge,
    Unavailable,
)
from serving.index.errors import DuplicateIdError, UnknownIdError
from serving.index.item_table import metadata_text
from serving.log_rate import RateLimitedLog
from serving.metrics import ServerMetrics
from serving.request_context import current_request
from serving.request_interceptor import abort
from serving.response_wire import search_batch_response
from serving.service import NewItem, Query, RetrievalService

__all__ = ["SERVICE_NAME", "STATUS_FOR", "RetrievalServicer", "add_retrieval_to_server", "status_for",
           "wire_metadata"]

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Retrieval"].full_name

_LOG = logging.getLogger("serving.grpc")
_CLIENT_ERRORS = RateLimitedLog(_LOG, per_second=5.0, burst=20)
_T = TypeVar("_T")

StatusCode = grpc.StatusCode

# The `serving.errors` family -> status code, first match wins (subclasses before their bases). Image
# errors are TooLarge / InvalidInput; gallery-index errors are InvalidInput, but for unknown and duplicate ids.
STATUS_FOR: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (TooLarge, StatusCode.RESOURCE_EXHAUSTED),
    (StorageFull, StatusCode.RESOURCE_EXHAUSTED),
    (UnknownIdError, StatusCode.NOT_FOUND),
    (DuplicateIdError, StatusCode.ALREADY_EXISTS),
    (InvalidInput, StatusCode.INVALID_ARGUMENT),
    (DeadlineExceeded, StatusCode.DEADLINE_EXCEEDED),
    (Unavailable, StatusCode.UNAVAILABLE),
    (Overloaded, StatusCode.RESOURCE_EXHAUSTED),
    (Cancelled, StatusCode.CANCELLED),
)


def status_for(exc: BaseException) -> grpc.StatusCode | None:
    """The status code for a domain error, or None for an unexpected exception (a bug: INTERNAL)."""
    for kind, code in STATUS_FOR:
        if isinstance(exc, kind):
            return code
    return None


def wire_metadata(metadata: Mapping[str, Any]) -> dict[str, str]:
    """Metadata as proto ``map<string, string>``: each value's `metadata_text` (3 -> "3", True -> "true")."""
    return {str(key): metadata_text(value) for key, value in metadata.items()}


def _deadline(context: grpc.aio.ServicerContext, max_s: float) -> float:
    """The call's deadline, at most ``max_s`` from now, as absolute monotonic seconds; raises
    DeadlineExceeded if it already passed."""
    remaining = context.time_remaining()
    if remaining is None:
        return time.monotonic() + max_s
    if remaining <= 0:
        raise DeadlineExceeded("the call's deadline had passed when it reached the server; use a longer one")
    return time.monotonic() + min(remaining, max_s)


def _serialize(message: Any) -> bytes:
    """Response serializer: bytes a handler built itself (`serving.response_wire`) go out as they are."""
    return message if isinstance(message, bytes) else message.SerializeToString()


def add_retrieval_to_server(servicer: RetrievalServicer, server: grpc.aio.Server) -> None:
    """Register cdd.v1.Retrieval like the generated ``add_RetrievalServicer_to_server``, except that a
    handler may return the serialised response bytes (Search and SearchBatch do)."""
    handlers = {}
    for method in pb.DESCRIPTOR.services_by_name["Retrieval"].methods:
        request = getattr(pb, method.input_type.name)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name), request_deserializer=request.FromString, response_serializer=_serialize
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))


def _new_item(message: pb.NewItem) -> NewItem:
    source = message.WhichOneof("source")
    return NewItem(
        id=message.id,
        image=message.image if source == "image" else None,
        vector=np.asarray(message.vector.values, dtype=np.float32) if source == "vector" else None,
        metadata=dict(message.metadata),
    )


_DEADLINE_SLACK_S = 0.05
"""A cancel this close to the call's deadline is gRPC ending the call at its deadline."""


class RetrievalServicer:
    """cdd.v1.Retrieval over a `RetrievalService`, on one event loop; ``executor`` runs the calls that
    may block (see the module docstring). Every failure becomes a status in `_abort`."""

    def __init__(self, service: RetrievalService, executor: Executor,
                 max_deadline_s: float = ServeConfig.max_deadline_s, metrics: ServerMetrics | None = None) -> None:
        self._service = service
        self._executor = executor
        self._max_deadline_s = max_deadline_s
        self._metrics = metrics
        self._waiters: BatchWaiters | None = None

    async def _abort(self, context: grpc.aio.ServicerContext, exc: Exception) -> NoReturn:
        if self._metrics is not None and isinstance(exc, StorageFull | StorageFailed):
            reason = "disk_full" if isinstance(exc, StorageFull) else "io_error"
            self._metrics.write_failures.labels(reason=reason).inc()
        code = status_for(exc)
        if code is None:
            _LOG.error("unexpected error in a Retrieval call", exc_info=exc)
            await abort(context, StatusCode.INTERNAL,
                        f"internal server error ({type(exc).__name__}); see the server log")
        _CLIENT_ERRORS.log(logging.INFO, "%s: %s", code.name, exc)
        await abort(context, code, str(exc))

    def _ended(self, exc: Exception) -> None:
        """Log why a call gRPC already ended (cancel or deadline) stopped, and note its status for metrics."""
        code = status_for(exc) or StatusCode.CANCELLED
        call = current_request()
        if call is not None:
            call.code = code.name
        _CLIENT_ERRORS.log(logging.INFO, "%s: %s", code.name, exc)

    async def Search(self, request: pb.SearchRequest, context: grpc.aio.ServicerContext) -> bytes:
        start = time.monotonic()
        deadline = None
        try:
            deadline = _deadline(context, self._max_deadline_s)
            filters = dict(request.filters) if request.filters else None
            query = self._service.search_query(request.image, request.k, filters, deadline)
            if self._waiters is None:
                self._waiters = BatchWaiters(self._service.batcher, asyncio.get_running_loop())
            found = await self._waiters.run(query, deadline)
            self._service.check_deadline(deadline)
            return found.reply()
        except asyncio.CancelledError:
            late = deadline is not None and time.monotonic() >= deadline - _DEADLINE_SLACK_S
            self._ended(self._service.batcher.deadline_error(start) if late else
                        Cancelled("the client cancelled the call; its queued work was dropped"))
            raise
        except Exception as exc:  # every failure becomes a status; the server keeps serving
            await self._abort(context, exc)

    async def _in_thread(self, context: grpc.aio.ServicerContext, work: Callable[[float | None], _T]) -> _T:
        """``work(deadline)`` in the thread pool, with this call's `RequestContext`; a cancel of this
        coroutine cancels the call there and waits for the thread to stop."""
        try:
            deadline = _deadline(context, self._max_deadline_s)
        except Exception as exc:
            await self._abort(context, exc)
        running = asyncio.get_running_loop().run_in_executor(
            self._executor, contextvars.copy_context().run, work, deadline)
        try:
            return await asyncio.shield(running)
        except asyncio.CancelledError:
            call = current_request()
            if call is not None:
                call.cancel()
            await _settle(running)
            raise
        except Exception as exc:
            await self._abort(context, exc)

    async def SearchBatch(self, request: pb.SearchBatchRequest, context: grpc.aio.ServicerContext) -> bytes:
        def work(deadline: float | None) -> bytes:
            queries = [Query(q.image, q.k, dict(q.filters)) for q in request.queries]
            return search_batch_response(self._service.search_batch(queries, deadline=deadline))

        return await self._in_thread(context, work)

    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        def work(deadline: float | None) -> pb.EmbedResponse:
            vector = self._service.embed(request.image, deadline=deadline)
            return pb.EmbedResponse(vector=vector.tolist(), dim=int(vector.shape[0]))

        return await self._in_thread(context, work)

    async def AddItems(self, request: pb.AddItemsRequest, context: grpc.aio.ServicerContext) -> pb.AddItemsResponse:
        def work(deadline: float | None) -> pb.AddItemsResponse:
            items = [_new_item(item) for item in request.items]
            added = self._service.add_items(items, deadline=deadline, upsert=request.upsert)
            return pb.AddItemsResponse(added=added, count=self._service.count())

        return await self._in_thread(context, work)

    async def RemoveItems(
        self, request: pb.RemoveItemsRequest, context: grpc.aio.ServicerContext
    ) -> pb.RemoveItemsResponse:
        def work(deadline: float | None) -> pb.RemoveItemsResponse:
            removed = self._service.remove_items(list(request.ids))
            return pb.RemoveItemsResponse(removed=removed, count=self._service.count())

        return await self._in_thread(context, work)

    async def Stats(self, request: pb.StatsRequest, context: grpc.aio.ServicerContext) -> pb.StatsResponse:
        def work(deadline: float | None) -> pb.StatsResponse:
            return _stats_response(self._service.stats())

        return await self._in_thread(context, work)


async def _settle(running: asyncio.Future) -> None:
    """Wait, through further cancels, for a thread-pool call to stop; its outcome no longer matters."""
    while not running.done():
        try:
            await asyncio.shield(running)
        except asyncio.CancelledError:
            continue
        except Exception:  # noqa: BLE001
            return


def _stats_response(stats: dict[str, Any]) -> pb.StatsResponse:
    return pb.StatsResponse(
        count=stats["count"],
        dim=stats["dim"],
        index_type=str(stats["index_type"]),
        metric=str(stats["metric"]),
        bundle_name=stats["bundle_name"],
        bundle_sha256=stats["bundle_sha256"],
        backend=stats["backend"],
        max_k=stats["max_k"],
        max_pixels=stats["max_pixels"],
        batching=pb.BatchingStats(**stats["batching"]),
        gallery_bundle_name=stats["gallery_bundle_name"],
        gallery_bundle_sha256=stats["gallery_bundle_sha256"],
        asymmetric=stats["asymmetric"],
    )
