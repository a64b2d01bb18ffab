"""`GatedEngine`: a real engine behind a gate the test opens and closes, and `wait_for`, a bounded poll.

"The engine is busy" becomes a state a test sets, not a load it has to generate, so overload tests need
no timing assertions.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from serving.backends import Engine

__all__ = ["GatedEngine", "wait_for"]


class GatedEngine:
    """The real engine behind a gate: ``embed`` waits while ``gate`` is clear, sleeps ``delay`` s, and
    records each call's batch size in ``calls``; ``entered`` counts calls that reached the gate."""

    def __init__(self, engine: Engine, delay: float = 0.0) -> None:
        self._engine = engine
        self.gate = threading.Event()
        self.gate.set()
        self.delay = delay
        self.calls: list[int] = []
        self.entered = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def embed(self, images: np.ndarray) -> np.ndarray:
        with self._lock:
            self.entered += 1
        if not self.gate.wait(30):
            raise RuntimeError("test gate never opened")
        time.sleep(self.delay)
        with self._lock:
            self.calls.append(images.shape[0])
        return self._engine.embed(images)


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 20.0) -> None:
    """Poll ``condition`` until true; fail naming ``what`` after ``seconds`` (a bound, not a measurement)."""
    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)
