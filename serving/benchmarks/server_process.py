"""`ServerProcess`: a server under test in its own process (cdd-serve or the bare server).

Started with port 0; the port (and the metrics port, when logged) is read from its log; a
``cdd-serve --workers N`` logs one port per worker process and is ready once all N did. CPU time is read
from ``/proc/PID/stat`` and context switches from ``/proc/PID/task/*/status`` (Linux), summed over the
server's processes, so the benchmark can report both per request. stderr is drained by a thread so a
chatty server never blocks on a full pipe; the last lines are kept for errors.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path

__all__ = ["ServerProcess"]

_PORT = re.compile(r"serving cdd\.v1\.Retrieval on 127\.0\.0\.1:(\d+)(?: \(pid (\d+),)?")
_METRICS = re.compile(r"metrics on http://127\.0\.0\.1:(\d+)/metrics")


class ServerProcess:
    """``python -m MODULE ARGS`` from the repository root; `start` waits until it serves (or fails) on
    ``servers`` ports (one per worker process)."""

    def __init__(self, module: str, args: Sequence[str], name: str, servers: int = 1) -> None:
        self.name = name
        self.command = [sys.executable, "-m", module, *args]
        self.servers = servers
        self.ports: dict[int, int] = {}  # serving pid -> port
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._lines: deque[str] = deque(maxlen=200)
        self._process: subprocess.Popen | None = None
        self._ready = threading.Event()

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._process.pid

    def start(self, timeout: float = 120.0) -> ServerProcess:
        """Start and wait for the 'serving ... on' line; raises RuntimeError with the log tail on failure."""
        root = Path(__file__).resolve().parents[2]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
        self._process = subprocess.Popen(self.command, cwd=root, env=env, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, text=True)
        threading.Thread(target=self._drain, name=f"{self.name}-log", daemon=True).start()
        end = time.monotonic() + timeout
        while not self._ready.wait(0.1):
            if self._process.poll() is not None or time.monotonic() > end:
                self.stop()
                raise RuntimeError(f"{self.name} did not start ({' '.join(self.command)}):\n" + self.log_tail())
        return self

    def _drain(self) -> None:
        assert self._process is not None and self._process.stderr is not None
        for line in self._process.stderr:
            self._lines.append(line.rstrip("\n"))
            if (found := _METRICS.search(line)) is not None:
                self.metrics_port = int(found.group(1))
            if (found := _PORT.search(line)) is not None:
                self.ports[int(found.group(2) or self._process.pid)] = int(found.group(1))
                self.port = self.port or int(found.group(1))
            if len(self.ports) >= self.servers and ("--metrics-port" not in self.command or self.metrics_port):
                self._ready.set()

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(list(self._lines)[-lines:])

    @property
    def target(self) -> str:
        """Every serving port as ``127.0.0.1:P`` (comma-separated for several worker processes)."""
        return ",".join(f"127.0.0.1:{port}" for port in self.ports.values())

    def _pids(self) -> list[int]:
        return sorted({self.pid, *self.ports})

    def cpu_seconds(self) -> float | None:
        """User + system CPU seconds of the server's processes so far; None where /proc is absent."""
        total = 0
        try:
            for pid in self._pids():
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
        except OSError:
            return None
        return total / os.sysconf("SC_CLK_TCK")

    def context_switches(self) -> tuple[int, int] | None:
        """(voluntary, involuntary) context switches of every thread of the server's processes so far
        (threads that ended are not counted); None where /proc is absent."""
        voluntary = involuntary = 0
        try:
            for pid in self._pids():
                for status in Path(f"/proc/{pid}/task").glob("*/status"):
                    try:
                        text = status.read_text()
                    except OSError:  # the thread ended meanwhile
                        continue
                    voluntary += int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", text, re.M).group(1))
                    involuntary += int(re.search(r"^nonvoluntary_ctxt_switches:\s+(\d+)", text, re.M).group(1))
        except (OSError, AttributeError):
            return None
        return voluntary, involuntary

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 30 s. Idempotent."""
        if self._process is None or self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
