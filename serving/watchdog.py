"""`EngineWatchdog`: health follows engine progress.

A stuck engine (a hung GPU call, a deadlocked backend) would otherwise leave health SERVING while every
call times out. The watchdog polls ``stalled_s()`` (seconds without engine progress while work waits, see
`DynamicBatcher.stalled_s`); past ``interval_s`` it reports unhealthy, and healthy again once work moves.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

__all__ = ["EngineWatchdog"]

_LOG = logging.getLogger("serving.watchdog")


class EngineWatchdog:
    """Calls ``on_change(healthy)`` on every change; polls every ``interval_s / 5`` (at least 10 ms)."""

    def __init__(
        self, stalled_s: Callable[[], float], interval_s: float, on_change: Callable[[bool], None]
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"watchdog interval must be > 0 s, got {interval_s}")
        self._stalled_s = stalled_s
        self._interval = interval_s
        self._on_change = on_change
        self._healthy = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cdd-watchdog", daemon=True)

    @property
    def healthy(self) -> bool:
        return self._healthy

    def start(self) -> EngineWatchdog:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        poll = max(0.01, self._interval / 5)
        while not self._stop.wait(poll):
            stalled = self._stalled_s()
            healthy = stalled < self._interval
            if healthy == self._healthy:
                continue
            self._healthy = healthy
            if healthy:
                _LOG.warning("engine made progress again; health back to SERVING")
            else:
                _LOG.error("engine made no progress for %.1f s with work waiting; health NOT_SERVING", stalled)
            self._on_change(healthy)
