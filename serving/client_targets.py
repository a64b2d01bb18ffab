"""Several server addresses behind one gRPC channel, for `cdd-serve --workers N` (one port per worker).

``"host:port"`` is used as it is. ``"host:port,host:port,..."`` becomes an ``ipv4:`` / ``ipv6:`` target
list (each host resolved once, here) with gRPC's ``round_robin`` policy: the channel keeps a connection to
every address and sends each call to the next one, skipping addresses that are down (a worker being
restarted). With TLS the certificate is checked against the first host's name.
"""

from __future__ import annotations

import socket
from typing import Any

__all__ = ["channel_target"]


def _split(address: str) -> tuple[str, int]:
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"target {address!r}: expected HOST:PORT (e.g. 127.0.0.1:50051 or [::1]:50051)")
    return host.strip("[]"), int(port)


def channel_target(target: str) -> tuple[str, list[tuple[str, Any]]]:
    """(gRPC target, extra channel options) for ``target``: one HOST:PORT, or several comma-separated.
    Raises ValueError for a malformed address, an unknown host, or IPv4 and IPv6 addresses mixed."""
    addresses = [a for a in target.split(",") if a.strip()]
    if len(addresses) <= 1:
        return target, []
    resolved: list[tuple[int, str, int]] = []
    for address in addresses:
        host, port = _split(address)
        try:
            family, *_, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        except socket.gaierror as exc:
            raise ValueError(f"target {address!r}: cannot resolve {host!r} ({exc})") from exc
        resolved.append((family, str(sockaddr[0]), port))
    families = {family for family, _, _ in resolved}
    if len(families) > 1:
        raise ValueError(f"target {target!r}: mixes IPv4 and IPv6 addresses; give one family")
    if families == {socket.AF_INET6}:
        joined = "ipv6:" + ",".join(f"[{ip}]:{port}" for _, ip, port in resolved)
    else:
        joined = "ipv4:" + ",".join(f"{ip}:{port}" for _, ip, port in resolved)
    options: list[tuple[str, Any]] = [("grpc.lb_policy_name", "round_robin")]
    first_host = _split(addresses[0])[0]
    if first_host != resolved[0][1]:  # a name, not an address: what the server's certificate names
        options.append(("grpc.ssl_target_name_override", first_host))
    return joined, options
