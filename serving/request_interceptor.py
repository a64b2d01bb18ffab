"""`RequestInterceptor` (grpc.aio): per-call request id, admission cap, cancellation and metrics for unary calls.

For every unary call: the request id is the client's ``x-request-id`` metadata (printable, <= 128 chars)
or a new one, returned in the trailing metadata and put in the call's `RequestContext` (so its log lines
carry it). Retrieval calls other than Stats pass `Admission` first: over the cap they get
RESOURCE_EXHAUSTED at once. A client cancel cancels the context (the batcher drops the queued work).
`ServerMetrics` counts every call by method and status code. A request whose bytes do not parse gets
INVALID_ARGUMENT with the reason (`serving.request_decoding`), before admission. Streaming calls (health
Watch, reflection) pass through untouched. All of it runs on the server's event loop, in the call's task;
the wrapped handler of each method is built once and reused.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import grpc

from serving.admission import Admission
from serving.errors import Overloaded
from serving.log_rate import RateLimitedLog
from serving.metrics import ServerMetrics
from serving.request_context import RequestContext, current_request, request_scope
from serving.request_decoding import Undecodable, lenient

__all__ = ["REQUEST_ID_KEY", "CallAborted", "RequestInterceptor", "abort"]

REQUEST_ID_KEY = "x-request-id"
_MAX_ID_CHARS = 128
_LOG = logging.getLogger("serving.requests")


class CallAborted(Exception):
    """Raised by `abort` inside a call the interceptor serves: it records the call, then sends the status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


async def abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, details: str) -> NoReturn:
    """End the call with ``code`` and ``details``. Inside a call `RequestInterceptor` serves this raises
    `CallAborted`, so the interceptor frees the call's admission slot and counts it in the metrics BEFORE
    the client sees the status (grpc.aio's ``context.abort`` sends it at once), as the sync server did;
    elsewhere it is ``context.abort``."""
    if current_request() is not None:
        raise CallAborted(code, details)
    await context.abort(code, details)
    raise AssertionError("unreachable: context.abort raises")


def _request_id(metadata: Any) -> str:
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and 0 < len(value) <= _MAX_ID_CHARS and value.isprintable():
            return value
    return uuid.uuid4().hex


class RequestInterceptor(grpc.aio.ServerInterceptor):
    """Wraps unary handlers. ``gated_service``: full service name whose methods (but ``exempt``) go
    through ``admission``; ``admission`` / ``metrics`` None = no cap / no metrics."""

    def __init__(
        self,
        gated_service: str,
        admission: Admission | None = None,
        metrics: ServerMetrics | None = None,
        exempt: tuple[str, ...] = ("Stats",),
    ) -> None:
        self._prefix = f"/{gated_service}/"
        self._admission = admission
        self._metrics = metrics
        self._exempt = exempt
        self._refusals = RateLimitedLog(_LOG, per_second=1.0, burst=5)
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        known = self._wrapped.get(details.method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrap(details.method, handler)
        self._wrapped[details.method] = (handler, wrapped)
        return wrapped

    def _wrap(self, full_method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        method = full_method.rsplit("/", 1)[-1]
        gated = self._admission is not None and full_method.startswith(self._prefix) and method not in self._exempt
        inner = handler.unary_unary

        async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
            call = RequestContext(_request_id(context.invocation_metadata()), method)
            return await self._serve(inner, request, context, call, gated)

        return grpc.unary_unary_rpc_method_handler(
            behavior,
            request_deserializer=lenient(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    async def _serve(
        self, inner: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]], request: Any,
        context: grpc.aio.ServicerContext, call: RequestContext, gated: bool,
    ) -> Any:
        context.set_trailing_metadata(((REQUEST_ID_KEY, call.request_id),))
        start = time.perf_counter()
        code = "OK"
        aborted = None
        with request_scope(call):
            try:
                if isinstance(request, Undecodable):
                    await abort(context, grpc.StatusCode.INVALID_ARGUMENT, request.message(call.method))
                if gated:
                    self._admit(call)
                try:
                    return await inner(request, context)
                finally:
                    if gated:
                        self._leave()
            except CallAborted as exc:
                code, aborted = exc.code.name, exc
            except asyncio.CancelledError:  # the client cancelled, or gRPC ended the call at its deadline
                call.cancel()
                code = call.code or "CANCELLED"
                raise
            except BaseException:
                code = _code_name(context)
                raise
            finally:
                seconds = time.perf_counter() - start
                if self._metrics is not None:
                    self._metrics.observe_request(call.method, code, seconds)
                _LOG.debug("%s %s %.2f ms", call.method, code, seconds * 1000.0)
        await context.abort(aborted.code, aborted.details)

    def _admit(self, call: RequestContext) -> None:
        if self._admission is None:
            return
        try:
            self._admission.enter(call.method)
        except Overloaded as exc:
            self._refusals.log(logging.WARNING, "%s refused: %s", call.method, exc)
            raise CallAborted(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from None
        if self._metrics is not None:
            self._metrics.in_flight.inc()

    def _leave(self) -> None:
        if self._admission is None:
            return
        self._admission.leave()
        if self._metrics is not None:
            self._metrics.in_flight.dec()


def _code_name(context: grpc.aio.ServicerContext) -> str:
    """The status code the handler set (by abort or set_code), UNKNOWN for an uncaught exception."""
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
