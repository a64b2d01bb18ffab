"""Atomic file writes: write next to the target, then rename over it.

A reader (or a crash) never sees a half-written file: the data goes to a temporary file in the target's
folder, which is renamed into place only once complete; on any error it is deleted and the target is
left as it was. Files are made world-readable (mkstemp creates them owner-only).
(serving/atomic_file.py is the same for the serving side: training and serving never import each other.)
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "write_bytes_atomic", "write_text_atomic"]


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside target to write; on normal exit it replaces target."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(target: str | Path, data: bytes) -> Path:
    """Write data to target atomically; returns target as a Path."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_text_atomic(target: str | Path, text: str) -> Path:
    """Write text (UTF-8) to target atomically; returns target as a Path."""
    return write_bytes_atomic(target, text.encode("utf-8"))
