"""`RetrievalClient` (Python) and `cdd-search` (command line) for a cdd.v1.Retrieval server.

Failed calls raise ``grpc.RpcError`` with the server's status code and message (``err.code()``,
``err.details()``). Metadata values come back as strings (non-strings JSON-encoded by the server).
Calls that are safe to send twice are retried on UNAVAILABLE by gRPC itself, and calls wait for a
restarting server within their deadline (`serving.retry_policy.RetryPolicy`; ``retry=RetryPolicy.off()``
turns both off).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving._proto import retrieval_pb2 as pb
from serving._proto import retrieval_pb2_grpc as pb_grpc
from serving.auth import load_token
from serving.client_targets import channel_target
from serving.config import ServeConfig
from serving.retry_policy import RETRIED_METHODS, UPSERT_METHOD, RetryPolicy

__all__ = ["SearchHit", "RetrievalClient", "main"]

ImageLike = bytes | str | Path


@dataclass(frozen=True)
class SearchHit:
    """One result: gallery ``id``, ``score`` (higher is closer), string ``metadata``."""

    id: str
    score: float
    metadata: dict[str, str]


def _image_bytes(image: ImageLike) -> bytes:
    if isinstance(image, bytes):
        return image
    path = Path(image)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the image ({exc.strerror}); check the path") from exc


def _pem(value: str | Path | bytes | None) -> bytes | None:
    return value if value is None or isinstance(value, bytes) else Path(value).read_bytes()


def _fields(message: Any) -> dict[str, Any]:
    """Singular fields of a message as a dict, nested messages as dicts (enough for StatsResponse)."""
    return {
        f.name: _fields(getattr(message, f.name)) if f.message_type else getattr(message, f.name)
        for f in message.DESCRIPTOR.fields
    }


def _hits(response: pb.SearchResponse) -> list[SearchHit]:
    return [SearchHit(item.id, item.score, dict(item.metadata)) for item in response.items]


class RetrievalClient:
    """A channel to ``target`` ("host:port", or several comma-separated, e.g. the ports of `cdd-serve
    --workers`: calls go to each in turn, `serving.client_targets`). ``token``: bearer token sent on every
    call; ``tls_ca``: PEM root certificate (path or bytes) to use TLS, else plaintext;
    ``tls_cert``/``tls_key``: this client's PEM certificate and key for a server that requires them (mutual
    TLS); ``timeout``: default deadline (s);
    ``retry``: which failures are retried and whether calls wait for the server (see `RetryPolicy`)."""

    def __init__(
        self,
        target: str,
        token: str | None = None,
        tls_ca: str | Path | bytes | None = None,
        timeout: float = 10.0,
        max_message_bytes: int = ServeConfig.max_message_bytes,
        tls_cert: str | Path | bytes | None = None,
        tls_key: str | Path | bytes | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        if (tls_cert is None) != (tls_key is None) or (tls_cert is not None and tls_ca is None):
            raise ValueError("a client certificate needs its key and the server's CA: give tls_ca, tls_cert, tls_key")
        self.retry = RetryPolicy() if retry is None else retry
        sizes = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        credentials = None
        if tls_ca is not None:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_pem(tls_ca), private_key=_pem(tls_key), certificate_chain=_pem(tls_cert)
            )

        address, spread = channel_target(target)

        def channel(methods: tuple[str, ...]) -> grpc.Channel:
            options = sizes + self.retry.channel_options(methods) + spread
            if credentials is not None:
                return grpc.secure_channel(address, credentials, options=options)
            return grpc.insecure_channel(address, options=options)

        # Two channels: AddItems without upsert must never be sent twice, and a retry policy is per method.
        self._channel = channel((*RETRIED_METHODS, UPSERT_METHOD))
        self._once_channel = channel(())
        self._stub = pb_grpc.RetrievalStub(self._channel)
        self._once_stub = pb_grpc.RetrievalStub(self._once_channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout

    def _kwargs(self, timeout: float | None) -> dict[str, Any]:
        return {
            "timeout": self.timeout if timeout is None else timeout,
            "metadata": self._metadata,
            "wait_for_ready": self.retry.wait_for_ready,
        }

    def search(
        self,
        image: ImageLike,
        k: int = 5,
        filters: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> list[SearchHit]:
        """Top-``k`` gallery items for an image (bytes or file path), best first."""
        request = pb.SearchRequest(image=_image_bytes(image), k=k, filters=dict(filters or {}))
        return _hits(self._stub.Search(request, **self._kwargs(timeout)))

    def search_batch(
        self,
        images: Sequence[ImageLike],
        k: int = 5,
        filters: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> list[list[SearchHit]]:
        """One result list per image, in order, from a single SearchBatch call."""
        queries = [pb.SearchRequest(image=_image_bytes(i), k=k, filters=dict(filters or {})) for i in images]
        response = self._stub.SearchBatch(pb.SearchBatchRequest(queries=queries), **self._kwargs(timeout))
        return [_hits(result) for result in response.results]

    def embed(self, image: ImageLike, timeout: float | None = None) -> np.ndarray:
        """float32 (dim,) embedding of an image."""
        response = self._stub.Embed(pb.EmbedRequest(image=_image_bytes(image)), **self._kwargs(timeout))
        return np.asarray(response.vector, dtype=np.float32)

    def add_items(
        self, items: Iterable[Mapping[str, Any]], timeout: float | None = None, upsert: bool = False
    ) -> int:
        """Add items given as mappings with "id", exactly one of "image" (bytes/path) or "vector"
        (floats), and optional "metadata" (str -> str). All or nothing; returns how many were added.
        With ``upsert`` items whose id is present are replaced, and the call is retried on UNAVAILABLE;
        without it an id already present fails the call (ALREADY_EXISTS) and the call is never retried."""
        messages = []
        for item in items:
            message = pb.NewItem(id=item["id"], metadata=dict(item.get("metadata") or {}))
            if item.get("image") is not None:
                message.image = _image_bytes(item["image"])
            if item.get("vector") is not None:
                message.vector.values.extend(np.asarray(item["vector"], dtype=np.float32).tolist())
            messages.append(message)
        stub = self._stub if upsert else self._once_stub
        response = stub.AddItems(pb.AddItemsRequest(items=messages, upsert=upsert), **self._kwargs(timeout))
        return response.added

    def remove_items(self, ids: Sequence[str], timeout: float | None = None) -> int:
        """Remove items by id (all or nothing; NOT_FOUND if one is unknown); returns how many. Retried on
        UNAVAILABLE: a retry of a removal the server applied before going away answers NOT_FOUND."""
        response = self._stub.RemoveItems(pb.RemoveItemsRequest(ids=list(ids)), **self._kwargs(timeout))
        return response.removed

    def stats(self, timeout: float | None = None) -> dict[str, Any]:
        """StatsResponse as a dict of its fields (``batching`` a nested dict), numbers as Python numbers."""
        return _fields(self._stub.Stats(pb.StatsRequest(), **self._kwargs(timeout)))

    def health(self, service: str = "", timeout: float | None = None) -> str:
        """Health status name ("SERVING", "NOT_SERVING", ...) of ``service`` ("" = the whole server)."""
        response = self._health.Check(health_pb2.HealthCheckRequest(service=service), **self._kwargs(timeout))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def close(self) -> None:
        self._channel.close()
        self._once_channel.close()

    def __enter__(self) -> RetrievalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cdd-search", description="Search a cdd-serve gallery with images.")
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="query image file(s)")
    parser.add_argument("--target", default="127.0.0.1:50051",
                        help="server host:port, or several comma-separated (cdd-serve --workers ports)")
    parser.add_argument("-k", type=int, default=5, help="results per image")
    parser.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE", help="metadata filter")
    parser.add_argument("--token-file", type=Path, help="bearer token file (else $CDD_SERVE_TOKEN)")
    parser.add_argument("--tls-ca", type=Path, help="PEM root certificate: connect with TLS")
    parser.add_argument("--tls-cert", type=Path, help="PEM client certificate (mutual TLS; with --tls-key)")
    parser.add_argument("--tls-key", type=Path, help="PEM client private key (mutual TLS)")
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline per call (s)")
    parser.add_argument("--attempts", type=int, default=RetryPolicy.max_attempts,
                        help="attempts per call on UNAVAILABLE, 1..5 (1 = no retries)")
    parser.add_argument("--fail-fast", action="store_true",
                        help="fail at once when the server is unreachable instead of waiting for it (up to --timeout)")
    return parser


def _filters(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--filter {pair!r}: expected KEY=VALUE, e.g. --filter camera=3")
        out[key] = value
    return out


def _table(image: Path, hits: list[SearchHit]) -> str:
    lines = [f"query: {image}", f"{'rank':>4}  {'id':<32} {'score':>7}  {'label':<8} file"]
    for rank, hit in enumerate(hits, start=1):
        label = hit.metadata.get("label", hit.metadata.get("pid", "-"))
        file = hit.metadata.get("path", hit.metadata.get("file", "-"))
        lines.append(f"{rank:>4}  {hit.id:<32} {hit.score:>7.4f}  {label:<8} {file}")
    if not hits:
        lines.append("  (no results)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``cdd-search``: print a result table per image; exit 0, 1 on a failed call, 2 on bad arguments."""
    args = _parser().parse_args(argv)
    try:
        filters = _filters(args.filter)
        token = load_token(args.token_file)
        if (args.tls_cert is None) != (args.tls_key is None) or (args.tls_cert and args.tls_ca is None):
            raise ValueError("--tls-cert and --tls-key go together, with --tls-ca (mutual TLS)")
        payloads = [_image_bytes(path) for path in args.images]
        retry = RetryPolicy(max_attempts=args.attempts, wait_for_ready=not args.fail_fast)
    except ValueError as exc:
        print(f"cdd-search: {exc}", file=sys.stderr)
        return 2
    with RetrievalClient(args.target, token=token, tls_ca=args.tls_ca, timeout=args.timeout,
                         tls_cert=args.tls_cert, tls_key=args.tls_key, retry=retry) as client:
        for path, payload in zip(args.images, payloads, strict=True):
            try:
                hits = client.search(payload, k=args.k, filters=filters)
            except grpc.RpcError as exc:
                hint = ""
                if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED and not args.fail_fast:
                    hint = (f" (is cdd-serve running at {args.target}? calls wait up to --timeout for it; "
                            "--fail-fast reports an unreachable server at once)")
                print(f"cdd-search: {path}: {exc.code().name}: {exc.details()}{hint}", file=sys.stderr)
                return 1
            print(_table(path, hits))
    return 0


if __name__ == "__main__":
    sys.exit(main())
