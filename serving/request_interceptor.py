"""`RequestInterceptor`: per-call request id, admission cap, cancellation and metrics for unary calls.

For every unary call: the request id is the client's ``x-request-id`` metadata (printable, <= 128 chars)
or a new one, returned in the trailing metadata and put in the call's `RequestContext` (so its log lines
carry it). Retrieval calls other than Stats pass `Admission` first: over the cap they get
RESOURCE_EXHAUSTED at once. A client cancel cancels the context (the batcher drops the queued work).
`ServerMetrics` counts every call by method and status code. A request whose bytes do not parse gets
INVALID_ARGUMENT with the reason (`serving.request_decoding`), before admission. Streaming calls (health
Watch, reflection) pass through untouched.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc

from serving.admission import Admission
from serving.errors import Overloaded
from serving.log_rate import RateLimitedLog
from serving.metrics import ServerMetrics
from serving.request_context import RequestContext, request_scope
from serving.request_decoding import Undecodable, lenient

__all__ = ["REQUEST_ID_KEY", "RequestInterceptor"]

REQUEST_ID_KEY = "x-request-id"
_MAX_ID_CHARS = 128
_LOG = logging.getLogger("serving.requests")


def _request_id(metadata: Any) -> str:
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and 0 < len(value) <= _MAX_ID_CHARS and value.isprintable():
            return value
    return uuid.uuid4().hex


class RequestInterceptor(grpc.ServerInterceptor):
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

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = details.method.rsplit("/", 1)[-1]
        gated = self._admission is not None and details.method.startswith(self._prefix) and method not in self._exempt
        request_id = _request_id(details.invocation_metadata)
        inner = handler.unary_unary

        def behavior(request: Any, context: grpc.ServicerContext) -> Any:
            return self._serve(inner, request, context, RequestContext(request_id, method), gated)

        return grpc.unary_unary_rpc_method_handler(
            behavior,
            request_deserializer=lenient(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    def _serve(
        self, inner: Callable[[Any, grpc.ServicerContext], Any], request: Any, context: grpc.ServicerContext,
        call: RequestContext, gated: bool,
    ) -> Any:
        context.set_trailing_metadata(((REQUEST_ID_KEY, call.request_id),))
        running = [True]
        context.add_callback(lambda: call.cancel() if running[0] else None)
        start = time.perf_counter()
        code = "OK"
        with request_scope(call):
            try:
                if isinstance(request, Undecodable):
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message(call.method))
                if gated:
                    self._admit(context, call)
                try:
                    return inner(request, context)
                finally:
                    if gated:
                        self._leave()
            except BaseException:
                code = _code_name(context)
                raise
            finally:
                running[0] = False
                seconds = time.perf_counter() - start
                if self._metrics is not None:
                    self._metrics.observe_request(call.method, code, seconds)
                _LOG.debug("%s %s %.2f ms", call.method, code, seconds * 1000.0)

    def _admit(self, context: grpc.ServicerContext, call: RequestContext) -> None:
        if self._admission is None:
            return
        try:
            self._admission.enter(call.method)
        except Overloaded as exc:
            self._refusals.log(logging.WARNING, "%s refused: %s", call.method, exc)
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        if self._metrics is not None:
            self._metrics.in_flight.inc()

    def _leave(self) -> None:
        if self._admission is None:
            return
        self._admission.leave()
        if self._metrics is not None:
            self._metrics.in_flight.dec()


def _code_name(context: grpc.ServicerContext) -> str:
    """The status code the handler set (by abort or set_code), UNKNOWN for an uncaught exception."""
    code = context.code() if hasattr(context, "code") else None
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
