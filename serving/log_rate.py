"""`RateLimitedLog`: log at most a few lines per second, and say how many were dropped.

Client errors (bad images, bad k) are logged so an operator can see them, but a client sending garbage in
a loop must not fill the disk: beyond the rate, lines are counted and the next line that gets through
says how many were suppressed.
"""

from __future__ import annotations

import logging
import threading
import time

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """Token bucket in front of ``logger``: ``per_second`` lines on average, bursts of ``burst``."""

    def __init__(self, logger: logging.Logger, per_second: float = 5.0, burst: int = 20) -> None:
        if per_second <= 0 or burst < 1:
            raise ValueError(f"per_second must be > 0 and burst >= 1, got {per_second} and {burst}")
        self._logger = logger
        self._rate = per_second
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp = time.monotonic()
        self._suppressed = 0
        self._lock = threading.Lock()

    @property
    def suppressed(self) -> int:
        """Lines dropped since the last line that got through."""
        return self._suppressed

    def log(self, level: int, message: str, *args: object) -> bool:
        """Log like ``logger.log``; returns False when the line was suppressed."""
        if not self._logger.isEnabledFor(level):
            return False
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
            self._stamp = now
            if self._tokens < 1.0:
                self._suppressed += 1
                return False
            self._tokens -= 1.0
            dropped, self._suppressed = self._suppressed, 0
        if dropped:
            message = f"{message} ({dropped} similar lines suppressed by the rate limit)"
        self._logger.log(level, message, *args)
        return True
