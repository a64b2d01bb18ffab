"""`RequestContext`: what the code serving one RPC knows about its call (request id, method, cancellation).

The request interceptor (`serving.request_interceptor`) opens one per call with `request_scope`; code below
it (the batcher, log lines) reads it with `current_request` instead of taking it as an argument, the way a
logging context works. Outside a call `current_request` is None.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

__all__ = ["RequestContext", "current_request", "request_scope"]


@dataclass
class RequestContext:
    """One call: ``request_id`` (from ``x-request-id`` or generated), ``method`` (short name, "Search"),
    ``code``: the status name of a call gRPC ended before its handler answered (set by the handler for the
    metrics; None otherwise). `cancel` runs the callbacks registered with `on_cancel` (once); thread-safe."""

    request_id: str
    method: str
    code: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _callbacks: list[Callable[[], object]] = field(default_factory=list, repr=False)
    _cancelled: bool = False

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def on_cancel(self, callback: Callable[[], object]) -> Callable[[], None]:
        """Run ``callback`` when the call is cancelled (at once if it already was); returns an unregister."""
        with self._lock:
            if not self._cancelled:
                self._callbacks.append(callback)
                return lambda: self._forget(callback)
        callback()
        return lambda: None

    def cancel(self) -> None:
        with self._lock:
            if self._cancelled:
                return
            self._cancelled = True
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def _forget(self, callback: Callable[[], object]) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._callbacks.remove(callback)


_CURRENT: ContextVar[RequestContext | None] = ContextVar("cdd_request", default=None)


def current_request() -> RequestContext | None:
    """The call being served by this thread (or task: each call's coroutine has its own), or None outside a call."""
    return _CURRENT.get()


@contextlib.contextmanager
def request_scope(context: RequestContext) -> Iterator[RequestContext]:
    """Make ``context`` the current request for the duration of the block."""
    token = _CURRENT.set(context)
    try:
        yield context
    finally:
        _CURRENT.reset(token)
