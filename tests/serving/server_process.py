"""A real `cdd-serve` (``python -m serving.server``) subprocess for tests that kill it: started on port 0,
its port read from its log, stopped with SIGKILL or SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

__all__ = ["ROOT", "ServerProcess", "free_port"]


def free_port() -> int:
    """A loopback port that was free a moment ago (for servers that cannot bind port 0 and report it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``cdd-serve --bundle B --index I --port 0 --backend onnxruntime-cpu --workers 1`` (one server process,
    what these tests kill) plus ``extra`` flags."""

    def __init__(self, bundle: Path, index: Path, *extra: str) -> None:
        command = [
            sys.executable, "-m", "serving.server", "--bundle", str(bundle), "--index", str(index),
            "--port", "0", "--backend", "onnxruntime-cpu", "--workers", "1", *extra,
        ]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
        self.log: list[str] = []
        self.port = self._wait_for_port()

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if not line:
                break
            self.log.append(line)
            found = re.search(r"serving cdd\.v1\.Retrieval on 127\.0\.0\.1:(\d+)", line)
            if found:
                return int(found.group(1))
        self.kill()
        raise AssertionError("server did not start:\n" + "".join(self.log))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, nothing is saved."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self) -> int:
        """SIGTERM and wait; returns the exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)
