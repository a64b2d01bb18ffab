"""`ServerProcess`: a server under test in its own process (cdd-serve or the bare server).

Started with port 0; the port (and the metrics port, when logged) is read from its log. Its CPU time is
read from ``/proc/PID/stat`` (Linux), so the benchmark can report server CPU seconds per request. stderr is
drained by a thread so a chatty server never blocks on a full pipe; the last lines are kept for errors.
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

_PORT = re.compile(r"serving cdd\.v1\.Retrieval on 127\.0\.0\.1:(\d+)")
_METRICS = re.compile(r"metrics on http://127\.0\.0\.1:(\d+)/metrics")


class ServerProcess:
    """``python -m MODULE ARGS`` from the repository root; `start` waits until it serves (or fails)."""

    def __init__(self, module: str, args: Sequence[str], name: str) -> None:
        self.name = name
        self.command = [sys.executable, "-m", module, *args]
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
                self.port = int(found.group(1))
                if "--metrics-port" not in self.command:
                    self._ready.set()
            if self.port is not None and self.metrics_port is not None:
                self._ready.set()

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(list(self._lines)[-lines:])

    def cpu_seconds(self) -> float | None:
        """User + system CPU seconds of the server process so far; None where /proc is absent."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

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
