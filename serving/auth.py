"""Bearer-token access control for the gRPC server: a read token and an admin token.

Every call must carry ``authorization: Bearer <token>`` metadata once the server has any token:

- the **admin** token (``--token-file`` or ``$CDD_SERVE_TOKEN``) may call everything;
- the **read** token (``--read-token-file`` or ``$CDD_SERVE_READ_TOKEN``) may call Search, SearchBatch,
  Embed, Stats and server reflection, and gets PERMISSION_DENIED for the gallery changes
  (AddItems, RemoveItems, `ADMIN_METHODS`);
- a missing or unknown token gets UNAUTHENTICATED before any handler runs. With only a read token
  configured, gallery changes are refused for everyone (PERMISSION_DENIED).

Tokens are compared in constant time (`hmac.compare_digest`, against every configured token). Health
checks (``grpc.health.v1.Health`` Check, Watch and List) are exempt so that load balancers and
orchestrator probes, which send no credentials, can still see whether the server is up; server reflection
is NOT exempt (it discloses the API). Tokens travel in clear text without TLS: `serving.tls` refuses a
plaintext bind beyond loopback.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import grpc

from serving.request_interceptor import abort

__all__ = [
    "ADMIN_METHODS",
    "HEALTH_METHODS",
    "READ_TOKEN_ENV",
    "TOKEN_ENV",
    "BearerTokenInterceptor",
    "load_token",
]

HEALTH_METHODS = (
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.health.v1.Health/List",
)
ADMIN_METHODS = ("/cdd.v1.Retrieval/AddItems", "/cdd.v1.Retrieval/RemoveItems")
"""Methods only the admin token may call (they change the gallery)."""
TOKEN_ENV = "CDD_SERVE_TOKEN"
READ_TOKEN_ENV = "CDD_SERVE_READ_TOKEN"
_SCHEME = "bearer "


def load_token(
    token_file: str | Path | None = None, environ: dict[str, str] | None = None, variable: str = TOKEN_ENV
) -> str | None:
    """The token from ``token_file`` (surrounding whitespace stripped) or else ``$variable``; None if neither
    is given. Raises ValueError for an unreadable or empty file, or an empty variable."""
    if token_file is not None:
        path = Path(token_file)
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise ValueError(f"{path}: cannot read token file ({exc.strerror}); fix the token file flag") from exc
        if not token:
            raise ValueError(f"{path}: the token file is empty; write the shared secret into it")
        return token
    env = os.environ if environ is None else environ
    if variable in env:
        token = env[variable].strip()
        if not token:
            raise ValueError(f"${variable} is set but empty; set it to the shared secret or unset it")
        return token
    return None


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """(grpc.aio) Check ``authorization: Bearer <token>`` against the admin ``token`` and the ``read_token`` (either
    may be None, not both). ``exempt`` lists full method names (``/package.Service/Method``) that skip the
    check; ``admin_methods`` those the read token may not call."""

    def __init__(
        self,
        token: str | None,
        exempt: Iterable[str] = HEALTH_METHODS,
        read_token: str | None = None,
        admin_methods: Iterable[str] = ADMIN_METHODS,
    ) -> None:
        if not token and not read_token:
            raise ValueError("no auth token given; pass a token and/or a read token, or no interceptor")
        if token and read_token and hmac.compare_digest(token.encode(), read_token.encode()):
            raise ValueError("the read token equals the admin token; give them different secrets")
        self._admin = token.encode() if token else None
        self._read = read_token.encode() if read_token else None
        self._exempt = frozenset(exempt)
        self._admin_methods = frozenset(admin_methods)

    def _role(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
        """"admin", "read" or None (no or unknown token); compares with every configured token."""
        value = ""
        for key, item in metadata or ():
            if key == "authorization" and isinstance(item, str):
                value = item
                break
        if value[: len(_SCHEME)].lower() != _SCHEME:
            return None
        given = value[len(_SCHEME) :].strip().encode()
        is_admin = self._admin is not None and hmac.compare_digest(given, self._admin)
        is_read = self._read is not None and hmac.compare_digest(given, self._read)
        return "admin" if is_admin else "read" if is_read else None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method in self._exempt:
            return handler
        role = self._role(handler_call_details.invocation_metadata)
        if role is None:
            return _deny_like(handler, grpc.StatusCode.UNAUTHENTICATED, (
                f"{method} requires 'authorization: Bearer <token>' metadata with one of the server's tokens; "
                "the token was missing or wrong"))
        if method in self._admin_methods and role != "admin":
            if self._admin is None:
                reason = ("this server has no admin token (started with a read token only), so gallery changes "
                          "are disabled; restart it with --token-file")
            else:
                reason = "the token sent is the read-only token; send the admin token"
            return _deny_like(handler, grpc.StatusCode.PERMISSION_DENIED,
                              f"{method} changes the gallery and needs the admin token; {reason}")
        return handler


def _deny_like(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same streaming shape as ``handler`` that aborts with ``code`` and ``message``."""

    async def deny(_request: object, context: grpc.aio.ServicerContext) -> None:
        await abort(context, code, message)

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(
        deny,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
