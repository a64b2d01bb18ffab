"""`WriteLog`: the append-only, fsynced log of gallery changes made since the last snapshot.

One file per snapshot version, ``<index dir>/journal-<version folder name>.log``, so a snapshot and the
changes made after it always go together: a new snapshot starts a new, empty log, and the old log is
deleted only after the new snapshot is live. Each record is a frame::

    <u32 payload length> <u32 crc32 of payload> <payload: JSON header line \\n raw float32 vectors>

`append` returns only after the frame is written and fsynced, so a change the server acknowledged is on
disk. `replay` yields the complete frames in order and truncates a torn tail (a frame cut short by a
crash, which was never acknowledged).
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serving.index.errors import IndexCorruptError

__all__ = ["JOURNAL_PREFIX", "LogRecord", "WriteLog", "journal_path"]

JOURNAL_PREFIX = "journal-"
_FRAME = struct.Struct("<II")


def journal_path(directory: Path, version: str) -> Path:
    """The log file of snapshot ``version`` (a version folder name) inside index ``directory``."""
    return directory / f"{JOURNAL_PREFIX}{version}.log"


@dataclass(frozen=True)
class LogRecord:
    """One logged change: ``op`` "add" (ids, vectors (N, dim) float32, metadata, upsert) or "remove" (ids)."""

    op: str
    ids: list[str]
    vectors: np.ndarray | None = None
    metadata: list[dict[str, Any]] = field(default_factory=list)
    upsert: bool = False

    def encode(self) -> bytes:
        header = {"op": self.op, "ids": self.ids, "metadata": self.metadata, "upsert": self.upsert}
        body = b"" if self.vectors is None else np.ascontiguousarray(self.vectors, dtype="<f4").tobytes()
        return json.dumps(header, separators=(",", ":")).encode() + b"\n" + body

    @classmethod
    def decode(cls, payload: bytes, dim: int) -> LogRecord:
        head, _, body = payload.partition(b"\n")
        header = json.loads(head)
        vectors = None
        if header["op"] == "add":
            vectors = np.frombuffer(body, dtype="<f4").astype(np.float32).reshape(len(header["ids"]), dim)
        return cls(header["op"], header["ids"], vectors, header.get("metadata", []), header.get("upsert", False))


class WriteLog:
    """Appends records to ``path`` (created if missing) with fsync; not thread-safe (the caller locks)."""

    def __init__(self, path: Path, dim: int) -> None:
        self.path = Path(path)
        self.dim = dim
        self.records = 0
        self._handle = None

    def replay(self) -> Iterator[LogRecord]:
        """The complete records in the file, oldest first; cuts off a torn tail so appends continue
        after the last complete record. Raises IndexCorruptError for a damaged record before the tail."""
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        offset = 0
        while offset + _FRAME.size <= len(data):
            length, crc = _FRAME.unpack_from(data, offset)
            start, end = offset + _FRAME.size, offset + _FRAME.size + length
            if end > len(data):
                break
            payload = data[start:end]
            if zlib.crc32(payload) != crc:
                if end < len(data):
                    raise IndexCorruptError(
                        f"{self.path}: record at byte {offset} fails its crc32 and is not the last one; the "
                        "log is damaged; restore the index from a backup or rebuild it with `cdd-index build`"
                    )
                break
            yield LogRecord.decode(payload, self.dim)
            self.records += 1
            offset = end
        if offset < len(data):
            with open(self.path, "r+b") as handle:
                handle.truncate(offset)
                os.fsync(handle.fileno())

    def append(self, record: LogRecord) -> None:
        """Write one record and fsync it (and, for a new file, its folder) before returning."""
        if self._handle is None:
            new = not self.path.exists()
            self._handle = open(self.path, "ab")  # noqa: SIM115 - kept open across appends, closed in close()
            if new:
                _fsync_dir(self.path.parent)
        payload = record.encode()
        self._handle.write(_FRAME.pack(len(payload), zlib.crc32(payload)) + payload)
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self.records += 1

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
