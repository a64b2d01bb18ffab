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
import ssl
import tempfile
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


def _pem(value: Path | bytes, what: str) -> tuple[bytes, str]:
    """(PEM bytes, a name for messages) of a path or bytes; ValueError naming an unreadable file."""
    if isinstance(value, bytes):
        return value, f"the {what} (given as bytes)"
    try:
        return Path(value).read_bytes(), f"{value} (the {what})"
    except OSError as exc:
        raise ValueError(f"{value}: cannot read the {what} ({exc.strerror}); check the path") from exc


def _check_pem(
    cert: bytes, cert_name: str, key: bytes, key_name: str, client_ca: bytes | None, ca_name: str
) -> None:
    """ValueError naming the file and the problem unless the certificate, key (matching it, unencrypted)
    and client CA load in OpenSSL (Python's ssl); gRPC itself only says the port could not be bound."""
    if b"-----BEGIN CERTIFICATE-----" not in cert:
        raise ValueError(f"{cert_name}: no PEM certificate in it (expected a -----BEGIN CERTIFICATE----- block)")
    if b"PRIVATE KEY-----" not in key:
        raise ValueError(f"{key_name}: no PEM private key in it (expected a -----BEGIN ... PRIVATE KEY----- block)")
    if b"ENCRYPTED" in key:
        raise ValueError(f"{key_name}: the private key is encrypted (a passphrase is needed, and the server has "
                         "none); decrypt it: openssl pkey -in KEY -out KEY.plain, and keep that file private")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_verify_locations(cadata=cert.decode("ascii", "replace"))
    except ssl.SSLError as exc:
        raise ValueError(f"{cert_name}: not a valid PEM certificate ({exc.reason or exc})") from exc
    with tempfile.TemporaryDirectory(prefix="cdd-tls-") as folder:
        cert_file, key_file = Path(folder) / "cert.pem", Path(folder) / "key.pem"
        cert_file.write_bytes(cert)
        key_file.write_bytes(key)
        try:
            context.load_cert_chain(cert_file, key_file, password=lambda: b"")
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                raise ValueError(f"{key_name} does not belong to the certificate {cert_name}; pass the key the "
                                 "certificate was issued for") from exc
            raise ValueError(f"{key_name}: not a usable PEM private key ({exc.reason or exc}); an encrypted key "
                             "must be decrypted first (openssl pkey -in KEY -out KEY.plain)") from exc
    if client_ca is not None:
        try:
            context.load_verify_locations(cadata=client_ca.decode("ascii", "replace"))
        except ssl.SSLError as exc:
            raise ValueError(f"{ca_name}: not a valid PEM CA certificate ({exc.reason or exc})") from exc


def server_credentials(
    cert: Path | bytes, key: Path | bytes, client_ca: Path | bytes | None = None
) -> grpc.ServerCredentials:
    """TLS credentials from PEM paths or bytes; with ``client_ca`` clients must present a certificate
    signed by it (mutual TLS). Raises ValueError naming the file for an unreadable or invalid certificate,
    key (or one that does not match the certificate) or CA."""
    cert_pem, cert_name = _pem(cert, "TLS certificate")
    key_pem, key_name = _pem(key, "TLS private key")
    ca_pem, ca_name = _pem(client_ca, "client CA certificate") if client_ca is not None else (None, "")
    _check_pem(cert_pem, cert_name, key_pem, key_name, ca_pem, ca_name)
    pair = [(key_pem, cert_pem)]
    if ca_pem is None:
        return grpc.ssl_server_credentials(pair)
    return grpc.ssl_server_credentials(pair, root_certificates=ca_pem, require_client_auth=True)
