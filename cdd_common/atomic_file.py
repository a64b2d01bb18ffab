"""Atomic, durable file writes: write next to the target, fsync, rename over it, fsync the folder.

A reader (or a crash) never sees a half-written file: the data goes to a temporary file in the target's
folder, which is flushed to disk (fsync) and only then renamed into place; the folder is fsynced after
the rename so the new name itself survives a power loss. On any error the temporary file is deleted and
the target is left as it was. Files are made world-readable (mkstemp creates them owner-only).
Training, export and serving all write through this one module (`cdd_common`, torch-free).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "fsync_dir", "fsync_file", "write_bytes_atomic", "write_text_atomic"]


def fsync_file(path: str | Path) -> None:
    """Flush ``path``'s data and metadata to disk (os.fsync); raises OSError."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Flush folder ``path``'s entries (names created, renamed or removed in it) to disk.

    A no-op where folders cannot be opened (Windows); raises OSError otherwise."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside target to write; on normal exit it is fsynced and replaces target,
    and target's folder is fsynced."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        fsync_file(tmp)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(target: str | Path, data: bytes) -> Path:
    """Write data to target atomically and durably; returns target as a Path."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_text_atomic(target: str | Path, text: str) -> Path:
    """Write text (UTF-8) to target atomically and durably; returns target as a Path."""
    return write_bytes_atomic(target, text.encode("utf-8"))
