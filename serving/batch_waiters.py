"""`BatchWaiters`: await the `DynamicBatcher`'s answers on an event loop, woken once per batch.

A coroutine on the loop submits one query (`DynamicBatcher.submit` with ``notify``) and awaits an
asyncio future. The batcher's worker, after each batch, hands the futures of that batch to ``notify``,
which makes ONE ``loop.call_soon_threadsafe`` call for all of them; the loop then resolves every waiter
of the batch. No thread waits for a request, and the loop is woken once per batch, not once per request.

Deadlines run on the loop: a timer at the call's deadline drops the queued request (``future.cancel``)
and fails the waiter with the batcher's `DeadlineExceeded` message. A cancelled coroutine (the client
cancelled, or gRPC ended the call at its deadline) drops its request when it is still queued; when the
worker already runs it, the coroutine waits for that batch to end before it re-raises, so the call's
admission slot is held exactly as long as the server works on it.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Future
from typing import Any

from serving.batcher import DynamicBatcher
from serving.errors import DeadlineExceeded

__all__ = ["BatchWaiters"]


class BatchWaiters:
    """Awaitable batcher results for coroutines on ``loop`` (all methods but `_notify` run on it)."""

    def __init__(self, batcher: DynamicBatcher, loop: asyncio.AbstractEventLoop) -> None:
        self._batcher = batcher
        self._loop = loop
        self._waiting: dict[Future, asyncio.Future] = {}
        self._notify = self._wake  # one object: the batcher groups a batch's requests by it

    async def run(self, query: Any, deadline: float | None) -> Any:
        """The batcher's answer to one ``query`` (decoded, embedded and searched on its worker). Raises
        what the batcher raises (Overloaded and Unavailable at once, the decode / engine / search error
        later) and DeadlineExceeded at ``deadline`` (absolute ``time.monotonic()`` seconds, the loop's clock)."""
        start = time.monotonic()
        if deadline is not None and start >= deadline:
            raise DeadlineExceeded("the deadline had already passed when the request reached the batcher; "
                                   "give the call a longer deadline")
        future = self._batcher.submit(None, deadline, query, notify=self._notify)
        waiter = self._loop.create_future()
        self._waiting[future] = waiter
        timer = None if deadline is None else self._loop.call_at(deadline, self._expire, future, waiter, start)
        try:
            return await waiter
        except asyncio.CancelledError:
            if not future.cancel() and not future.done():
                await self._finish(future)
            raise
        finally:
            if timer is not None:
                timer.cancel()
            self._waiting.pop(future, None)

    def deadline_error(self, start: float) -> DeadlineExceeded:
        """The batcher's error for a call that started waiting at ``start`` and met its deadline."""
        return self._batcher.deadline_error(start)

    async def _finish(self, future: Future) -> None:
        """Wait (uncancellably) for a request the worker is running."""
        done = self._loop.create_future()
        self._waiting[future] = done
        while not done.done():
            try:
                await asyncio.shield(done)
            except asyncio.CancelledError:
                continue
            except Exception:  # noqa: BLE001 - the call is over; its result no longer matters
                return

    def _expire(self, future: Future, waiter: asyncio.Future, start: float) -> None:
        if not waiter.done():
            future.cancel()
            waiter.set_exception(self._batcher.deadline_error(start))

    def _wake(self, futures: list[Future]) -> None:  # on the batcher's worker
        try:
            self._loop.call_soon_threadsafe(self._resolve, futures)
        except RuntimeError:  # the loop is closed: its callers are gone
            pass

    def _resolve(self, futures: list[Future]) -> None:
        for future in futures:
            waiter = self._waiting.pop(future, None)
            if waiter is None or waiter.done() or future.cancelled():
                continue
            error = future.exception()
            if error is not None:
                waiter.set_exception(error)
            else:
                waiter.set_result(future.result())
