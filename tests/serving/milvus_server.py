"""A real Milvus server for tests: ``milvus-lite server`` on a loopback port, as a subprocess."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.serving.server_process import ROOT, free_port

__all__ = ["MilvusServer"]


class MilvusServer:
    """``milvus-lite server --data-dir DATA`` on a free loopback port; ``uri`` to connect, `stop` to end it."""

    def __init__(self, data: Path, start_timeout_s: float = 60.0) -> None:
        from pymilvus import MilvusClient

        port = free_port()
        milvus_lite = Path(sys.executable).with_name("milvus-lite")
        command = [str(milvus_lite), "server", "--data-dir", str(data), "--host", "127.0.0.1", "--port", str(port)]
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        text=True)
        self.uri = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + start_timeout_s
        while time.monotonic() < deadline:
            try:
                MilvusClient(self.uri, timeout=2, dedicated=True).close()  # no pooled, pinging connection left
                return
            except Exception:  # not listening yet
                if self.process.poll() is not None:
                    raise AssertionError(f"milvus-lite server exited: {self.process.stderr.read()}") from None
                time.sleep(0.3)
        self.stop()
        raise AssertionError(f"milvus-lite server did not start within {start_timeout_s:g} s")

    def stop(self) -> None:
        """SIGKILL the server and reap it."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
