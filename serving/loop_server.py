"""`LoopServer`: a grpc.aio server on its own event-loop thread, driven from ordinary (blocking) code.

`serving.server.create_server` builds the aio server, its health servicer and its thread pool inside a
new event loop that runs in one daemon thread ("cdd-loop"); every RPC of the server runs on that loop.
`LoopServer` gives the rest of the program (``serve``, tests, the engine watchdog's thread) the blocking
`start` / `stop` of a ``grpc.Server`` plus a thread-safe `set_health`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

__all__ = ["LoopServer", "new_loop", "run_on"]

_T = TypeVar("_T")
_CALL_S = 60.0
"""Bound on one blocking call into the loop (start, a health change); stop waits for its grace instead."""


def new_loop() -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    """A new event loop running forever in a started daemon thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="cdd-loop", daemon=True)
    thread.start()
    return loop, thread


def run_on(loop: asyncio.AbstractEventLoop, make: Callable[[], Awaitable[_T]], timeout: float | None = _CALL_S) -> _T:
    """Run the coroutine ``make()`` on ``loop`` (another thread's) and return its result or raise its error."""

    async def wrapper() -> _T:
        return await make()

    return asyncio.run_coroutine_threadsafe(wrapper(), loop).result(timeout)


def close_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    """Stop ``loop``, wait for its thread and close it."""
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()


class LoopServer:
    """A started-or-not grpc.aio ``server`` on ``loop`` (run by ``thread``) with its ``health`` servicer
    and the ``executor`` its blocking calls use. Stopping it also stops the loop and the executor."""

    def __init__(self, server: grpc.aio.Server, loop: asyncio.AbstractEventLoop, thread: threading.Thread,
                 health: health_aio.HealthServicer, health_names: tuple[str, ...], executor: Executor) -> None:
        self.server = server
        self._loop = loop
        self._thread = thread
        self._health = health
        self._health_names = health_names
        self._executor = executor
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()

    def start(self) -> None:
        run_on(self._loop, self.server.start)

    def set_health(self, serving: bool) -> None:
        """Report SERVING or NOT_SERVING for the server and the Retrieval service; from any thread."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING

        async def change() -> None:
            for name in self._health_names:
                await self._health.set(name, status)

        if not self._stopped.is_set():
            run_on(self._loop, change)

    def enter_graceful_shutdown(self) -> None:
        """Health NOT_SERVING for good (later `set_health` calls are ignored)."""
        if not self._stopped.is_set():
            run_on(self._loop, self._health.enter_graceful_shutdown)

    def stop(self, grace: float | None) -> threading.Event:
        """Refuse new calls, let in-flight ones finish for up to ``grace`` seconds (None: cancel them now),
        then stop the loop and the thread pool. Blocks until done; returns a set Event (like
        ``grpc.Server.stop``, whose result callers ``wait()`` on). Idempotent."""
        with self._stop_lock:
            if not self._stopped.is_set():
                try:
                    run_on(self._loop, lambda: self.server.stop(grace), timeout=None)
                finally:
                    close_loop(self._loop, self._thread)
                    self._executor.shutdown(wait=True)
                    self._stopped.set()
        return self._stopped
