"""`RetryPolicy`: which cdd.v1.Retrieval calls a client retries, and how, as a gRPC service config.

gRPC retries a call itself (no client code in the loop) when the channel carries a service config with a
``retryPolicy`` for the call's method: on UNAVAILABLE only (the server is unreachable, restarting or
shutting down), at most ``max_attempts`` attempts in all, the n-th retry after a random delay in
``[0, min(initial_backoff_s * multiplier**(n-1), max_backoff_s)]`` (gRPC's exponential backoff with full
jitter). Only calls that are safe to send twice are retried:

- Search, SearchBatch, Embed, Stats: they change nothing.
- RemoveItems: removing twice leaves the gallery as removing once. A retry of a removal whose reply was
  lost (the server applied it, then went away) answers NOT_FOUND: the ids are already gone.
- AddItems only with ``upsert`` (a second add replaces the first); `RetrievalClient` sends AddItems
  without upsert on a channel without this config, so it is never sent twice.

``wait_for_ready``: calls made while the channel has no connection wait (up to their deadline) for the
server to come back instead of failing at once with UNAVAILABLE; the channel redials after
``reconnect_backoff_s`` at first, at most every ``max_reconnect_backoff_s``. Together with the retries a
server restart costs callers latency, not errors, as long as it fits in the calls' deadlines.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["RetryPolicy", "RETRIED_METHODS", "UPSERT_METHOD", "SERVICE"]

SERVICE = "cdd.v1.Retrieval"
RETRIED_METHODS = ("Search", "SearchBatch", "Embed", "Stats", "RemoveItems")
UPSERT_METHOD = "AddItems"
_GRPC_MAX_ATTEMPTS = 5  # gRPC caps maxAttempts at 5 whatever the config says


@dataclass(frozen=True)
class RetryPolicy:
    """``max_attempts`` 1 (no retries) .. 5; backoffs in seconds; ``multiplier`` >= 1."""

    max_attempts: int = 5
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    multiplier: float = 2.0
    wait_for_ready: bool = True
    reconnect_backoff_s: float = 0.2
    max_reconnect_backoff_s: float = 2.0

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= _GRPC_MAX_ATTEMPTS:
            raise ValueError(f"max_attempts: expected 1..{_GRPC_MAX_ATTEMPTS} (gRPC's cap), found {self.max_attempts}")
        if not 0 < self.initial_backoff_s <= self.max_backoff_s:
            raise ValueError(
                f"backoff: expected 0 < initial_backoff_s <= max_backoff_s, found {self.initial_backoff_s} "
                f"and {self.max_backoff_s}"
            )
        if self.multiplier < 1:
            raise ValueError(f"multiplier: expected >= 1, found {self.multiplier}")
        if not 0 < self.reconnect_backoff_s <= self.max_reconnect_backoff_s:
            raise ValueError(
                f"reconnect backoff: expected 0 < reconnect_backoff_s <= max_reconnect_backoff_s, found "
                f"{self.reconnect_backoff_s} and {self.max_reconnect_backoff_s}"
            )

    @classmethod
    def off(cls) -> RetryPolicy:
        """No retries and no waiting: every failure surfaces at once (the behaviour without a policy)."""
        return cls(max_attempts=1, wait_for_ready=False)

    def service_config(self, methods: tuple[str, ...]) -> dict[str, Any]:
        """The service config (as a dict) retrying ``methods`` of cdd.v1.Retrieval on UNAVAILABLE."""
        if self.max_attempts == 1 or not methods:
            return {"methodConfig": []}
        retry = {
            "maxAttempts": self.max_attempts,
            "initialBackoff": f"{self.initial_backoff_s:.3f}s",
            "maxBackoff": f"{self.max_backoff_s:.3f}s",
            "backoffMultiplier": self.multiplier,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
        names = [{"service": SERVICE, "method": method} for method in methods]
        return {"methodConfig": [{"name": names, "retryPolicy": retry}]}

    def channel_options(self, methods: tuple[str, ...]) -> list[tuple[str, Any]]:
        """gRPC channel options: the service config for ``methods`` and the reconnect backoff."""
        return [
            ("grpc.enable_retries", 1 if self.max_attempts > 1 and methods else 0),
            ("grpc.service_config", json.dumps(self.service_config(methods))),
            ("grpc.initial_reconnect_backoff_ms", int(self.reconnect_backoff_s * 1000)),
            ("grpc.min_reconnect_backoff_ms", int(self.reconnect_backoff_s * 1000)),
            ("grpc.max_reconnect_backoff_ms", int(self.max_reconnect_backoff_s * 1000)),
        ]
