"""`Admission`: a cap on concurrent calls that refuses at once instead of queueing.

gRPC's sync server queues calls that find no free thread without bound; with the cap below the thread
count (`ServeConfig` checks that) every admitted call runs at once and the rest get RESOURCE_EXHAUSTED
in microseconds, so memory and latency stay bounded however hard clients push.
"""

from __future__ import annotations

import threading

from serving.errors import Overloaded

__all__ = ["Admission"]


class Admission:
    """At most ``limit`` holders at a time. `enter` raises Overloaded when full; `leave` frees a slot."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"admission limit must be >= 1, got {limit}")
        self.limit = limit
        self._lock = threading.Lock()
        self._in_flight = 0
        self._refused = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def refused(self) -> int:
        """Calls refused since start."""
        return self._refused

    def enter(self, what: str = "call") -> None:
        with self._lock:
            if self._in_flight >= self.limit:
                self._refused += 1
                raise Overloaded(
                    f"server overloaded: {self._in_flight} calls in flight, the limit is {self.limit} "
                    f"(--max-concurrent-rpcs); this {what} was refused at once, retry with backoff"
                )
            self._in_flight += 1

    def leave(self) -> None:
        with self._lock:
            if self._in_flight <= 0:
                raise RuntimeError("Admission.leave without a matching enter")
            self._in_flight -= 1
