"""`ray_session`: Ray for the length of a build, on a busy machine too.

A local runtime starts several processes (GCS server, raylet, workers) that must come up within Ray's
waits. On a loaded machine they can take longer than Ray's defaults, so the GCS and worker waits are
raised to 120 s (unless set in the environment). The raylet's 30 s registration wait is fixed in Ray, so
a start that times out is retried once, after the processes of the failed attempt (the new descendants
of this process) are killed by pid. On exit Ray is shut down and the SIGTERM / SIGINT handlers that
``ray.init`` installs are put back, so a process that builds in-process keeps its own signal handling.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["LOCAL_START_WAITS", "ray_session"]

_LOG = logging.getLogger("cdd-index")
LOCAL_START_WAITS = {"RAY_gcs_server_port_wait_time_s": "120", "RAY_worker_register_timeout_seconds": "120"}
"""Ray's start-up waits (environment variables, seconds) raised for a local runtime unless already set."""
_START_ATTEMPTS = 2


def _descendants(root: int) -> set[int]:
    """Live descendants of process ``root`` (from /proc; empty where there is none)."""
    children: dict[int, list[int]] = {}
    proc = Path("/proc")
    for entry in proc.iterdir() if proc.is_dir() else ():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _start_local(ray: Any, cpus: int | None, init_args: dict[str, Any]) -> None:
    for name, seconds in LOCAL_START_WAITS.items():
        os.environ.setdefault(name, seconds)
    for attempt in range(1, _START_ATTEMPTS + 1):
        before = _descendants(os.getpid())
        try:
            ray.init(address="local", num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING,
                     **init_args)
            return
        except Exception as exc:  # Ray raises plain Exception / RuntimeError when its processes start late
            if "timed out" not in str(exc).lower() or attempt == _START_ATTEMPTS:
                raise
            _LOG.warning("Ray did not start in time (%s); retrying once", exc)
            for pid in _descendants(os.getpid()) - before:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


@contextmanager
def ray_session(ray: Any, address: str | None = None, cpus: int | None = None, **init_args: Any) -> Iterator[bool]:
    """Ray for the block: one already initialised is used as it is (yields False); otherwise connect to
    ``address`` or start a local runtime of ``cpus`` logical CPUs (``init_args`` go to ``ray.init``), and
    on exit shut it down and put back the signal handlers (yields True)."""
    if ray.is_initialized():
        yield False
        return
    main_thread = threading.current_thread() is threading.main_thread()
    saved = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)} if main_thread else {}
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING, **init_args)
        else:
            _start_local(ray, cpus, init_args)
        yield True
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for number, handler in saved.items():
            signal.signal(number, handler)
