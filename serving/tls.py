"""Transport security for the gRPC server: TLS and mutual TLS credentials, and the plaintext-bind rule.

- ``--tls-cert/--tls-key``: the server speaks TLS.
- ``--tls-client-ca``: mutual TLS; every client must present a certificate signed by this CA (the
  handshake fails otherwise, before any RPC or token check).
- A plaintext server (no TLS) may listen on loopback only (127.0.0.0/8, ::1, localhost). Binding any
  other address without TLS is refused, even with a token (the token would cross the network in clear
  text), unless ``--allow-plaintext-remote`` is given, which turns the refusal into a logged warning (for
  a TLS-terminating proxy or a service mesh in front of the server).
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

import grpc

__all__ = ["PlaintextBindRefused", "check_bind", "is_loopback", "server_credentials"]

_LOG = logging.getLogger("serving.tls")


class PlaintextBindRefused(ValueError):
    """A server without TLS was asked to listen beyond loopback."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine ("localhost", 127.0.0.0/8, ::1); "0.0.0.0", "::", other
    names and addresses are not."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_bind(host: str, tls: bool, allow_plaintext_remote: bool = False) -> None:
    """Raise PlaintextBindRefused for a plaintext bind beyond loopback (a warning instead with
    ``allow_plaintext_remote``)."""
    if tls or is_loopback(host):
        return
    message = (
        f"refusing to serve plaintext gRPC on {host!r}: beyond loopback, images, results and bearer tokens "
        "would cross the network unencrypted; give --tls-cert and --tls-key (and --tls-client-ca for mutual "
        "TLS), bind 127.0.0.1, or pass --allow-plaintext-remote if TLS ends at a proxy in front"
    )
    if not allow_plaintext_remote:
        raise PlaintextBindRefused(message)
    _LOG.warning("serving plaintext gRPC on %s (--allow-plaintext-remote): traffic and tokens are unencrypted "
                 "up to this server", host)


def _pem(value: Path | bytes, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    try:
        return Path(value).read_bytes()
    except OSError as exc:
        raise ValueError(f"{value}: cannot read the {what} ({exc.strerror}); check the path") from exc


def server_credentials(
    cert: Path | bytes, key: Path | bytes, client_ca: Path | bytes | None = None
) -> grpc.ServerCredentials:
    """TLS credentials from PEM paths or bytes; with ``client_ca`` clients must present a certificate
    signed by it (mutual TLS). Raises ValueError for an unreadable file."""
    pair = [(_pem(key, "TLS private key"), _pem(cert, "TLS certificate"))]
    if client_ca is None:
        return grpc.ssl_server_credentials(pair)
    return grpc.ssl_server_credentials(
        pair, root_certificates=_pem(client_ca, "client CA certificate"), require_client_auth=True
    )
