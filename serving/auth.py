"""Bearer-token authentication for the gRPC server.

Every call must carry ``authorization: Bearer <token>`` metadata; the token is compared in constant time
and a missing or wrong one ends the call with UNAUTHENTICATED before any handler runs. Health checks
(``grpc.health.v1.Health`` Check, Watch and List) are exempt by default so that load balancers and
orchestrator probes, which send no credentials, can still see whether the server is up; server reflection
is NOT exempt (it discloses the API). Pass ``exempt=()`` to protect health checks too.

Send tokens over TLS (``--tls-cert/--tls-key``) when the server listens beyond loopback.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import grpc

__all__ = ["HEALTH_METHODS", "TOKEN_ENV", "BearerTokenInterceptor", "load_token"]

HEALTH_METHODS = (
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.health.v1.Health/List",
)
TOKEN_ENV = "CDD_SERVE_TOKEN"
_SCHEME = "bearer "


def load_token(token_file: str | Path | None = None, environ: dict[str, str] | None = None) -> str | None:
    """The token from ``token_file`` (surrounding whitespace stripped) or else ``$CDD_SERVE_TOKEN``; None if
    neither is given. Raises ValueError for an unreadable or empty file, or an empty variable."""
    if token_file is not None:
        path = Path(token_file)
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise ValueError(f"{path}: cannot read token file ({exc.strerror}); fix --token-file") from exc
        if not token:
            raise ValueError(f"{path}: the token file is empty; write the shared secret into it")
        return token
    env = os.environ if environ is None else environ
    if TOKEN_ENV in env:
        token = env[TOKEN_ENV].strip()
        if not token:
            raise ValueError(f"${TOKEN_ENV} is set but empty; set it to the shared secret or unset it")
        return token
    return None


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Reject calls without ``authorization: Bearer <token>`` (UNAUTHENTICATED); ``exempt`` lists full
    method names (``/package.Service/Method``) that skip the check."""

    def __init__(self, token: str, exempt: Iterable[str] = HEALTH_METHODS) -> None:
        if not token:
            raise ValueError("auth token is empty; pass the shared secret, or no interceptor to disable auth")
        self._token = token.encode()
        self._exempt = frozenset(exempt)

    def _allowed(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> bool:
        value = ""
        for key, item in metadata or ():
            if key == "authorization" and isinstance(item, str):
                value = item
                break
        if value[: len(_SCHEME)].lower() != _SCHEME:
            return False
        return hmac.compare_digest(value[len(_SCHEME) :].strip().encode(), self._token)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method in self._exempt:
            return handler
        if self._allowed(handler_call_details.invocation_metadata):
            return handler
        return _deny_like(handler, handler_call_details.method)


def _deny_like(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """A handler of the same streaming shape as ``handler`` that aborts with UNAUTHENTICATED."""
    message = (
        f"{method} requires 'authorization: Bearer <token>' metadata with the server's token; "
        "the token was missing or wrong"
    )

    def abort(_request: object, context: grpc.ServicerContext) -> None:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(
        abort,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
