"""`WriteLog`: the append-only, fsynced log of gallery changes made since the last snapshot.

One file per snapshot version, ``<index dir>/journal-<version folder name>.log``, so a snapshot and the
changes made after it always go together: a new snapshot starts a new, empty log, and the old log is
deleted only after the new snapshot is live. The bytes are described in `serving.index.log_frames`:
every record's header checks itself, so replay tells a clean log, a torn tail and damage apart.

- `append` returns only after the record is written and fsynced (and, for a new file, its folder), so a
  change the server acknowledged is on disk. If any step fails (ENOSPC, EDQUOT, EIO), the file is cut back
  to its last whole record before the error (StorageFull / StorageFailed) is raised, so the log is as it
  was and later appends land after good data. If even that cut fails, every later append is refused
  until a restart (whose replay cuts the partial record as a torn tail).
- `replay` returns the records; it cuts a torn tail (one WARNING naming the bytes and the offset) and
  refuses damage (LogDamagedError naming the file, the offset, the intact records after it and the
  recovery command). A log in the old format is read and rewritten in the current one.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cdd_common.atomic_file import fsync_dir, write_bytes_atomic
from serving.errors import StorageFailed
from serving.index.errors import LogDamagedError, storage_error
from serving.index.log_frames import FILE_MAGIC, LogScan, encode_frame, scan_log

__all__ = ["JOURNAL_PREFIX", "LogRecord", "WriteLog", "damage_message", "journal_path"]

JOURNAL_PREFIX = "journal-"
_LOG = logging.getLogger("serving.index")


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
        """The record of one payload; ValueError when it is not one (a checksum collision or a bug)."""
        head, _, body = payload.partition(b"\n")
        try:
            header = json.loads(head)
            op, ids = header["op"], header["ids"]
            vectors = None
            if op == "add":
                vectors = np.frombuffer(body, dtype="<f4").astype(np.float32).reshape(len(ids), dim)
            elif op != "remove":
                raise ValueError(f"unknown op {op!r}")
            return cls(op, list(ids), vectors, header.get("metadata", []), bool(header.get("upsert", False)))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"not a log record ({type(exc).__name__}: {exc})") from exc


def damage_message(path: Path, scan: LogScan) -> str:
    """What `replay` says about a damaged log: file, offset, the records after it, the recovery command."""
    damage = scan.damage
    assert damage is not None
    after = damage.after
    lost = (
        f"{len(after)} intact record(s) follow it (#{after[0][1]}..#{after[-1][1]}, from byte {after[0][0]})"
        if after else "no intact record follows it"
    )
    index = path.parent
    return (
        f"{path}: the write log is damaged at byte {damage.offset} of {scan.size}: {damage.reason}; "
        f"{len(scan.payloads)} record(s) before it are intact and {lost}; refusing to start rather than drop "
        f"acknowledged changes. Inspect with `cdd-index check --index {index}`, then salvage the intact records "
        f"with `cdd-index repair --index {index}` (it keeps a backup), or restore the folder from a backup"
    )


class WriteLog:
    """Appends records to ``path`` (created if missing) with fsync; not thread-safe (the caller locks)."""

    def __init__(self, path: Path, dim: int) -> None:
        self.path = Path(path)
        self.dim = dim
        self.records = 0
        self._fd: int | None = None
        self._good_end: int | None = None
        self._broken: str | None = None
        self._folder_synced = True

    def replay(self) -> list[LogRecord]:
        """The records in the file, oldest first. Cuts a torn tail (logged); rewrites an old-format log in
        the current format; raises LogDamagedError for damage anywhere else."""
        if not self.path.is_file():
            self._good_end, self.records = 0, 0
            return []
        scan = scan_log(self.path.read_bytes())
        if scan.state == "damaged":
            raise LogDamagedError(damage_message(self.path, scan))
        records = []
        for seq, payload in enumerate(scan.payloads):
            try:
                records.append(LogRecord.decode(payload, self.dim))
            except ValueError as exc:
                raise LogDamagedError(f"{self.path}: record #{seq} passes its checksums but {exc}; run "
                                      f"`cdd-index check --index {self.path.parent}`") from exc
        if scan.state == "torn":
            _LOG.warning("%s: cut a torn tail of %d byte(s) at byte %d (an append a crash interrupted; it was "
                         "never acknowledged); %d whole record(s) kept", self.path, scan.tail_bytes, scan.good_end,
                         len(records))
            with open(self.path, "r+b") as handle:
                handle.truncate(scan.good_end)
                os.fsync(handle.fileno())
        self._good_end = scan.good_end
        if scan.legacy and records:
            self._good_end = self._rewrite(records)
            _LOG.info("%s: rewrote %d record(s) of an old-format log in write-log format 2", self.path, len(records))
        self.records = len(records)
        return records

    def append(self, record: LogRecord) -> None:
        """Write one record and fsync it (and, for a new file, its folder) before returning. On failure the
        file is cut back to its last whole record and StorageFull / StorageFailed is raised."""
        if self._broken is not None:
            raise StorageFailed(self._broken)
        if self._good_end is None:
            self.replay()
        try:
            if self._fd is None:
                self._folder_synced = self._folder_synced and self.path.exists()
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            data = (FILE_MAGIC if self._good_end == 0 else b"") + encode_frame(self.records, record.encode())
            _write_all(self._fd, data)
            os.fsync(self._fd)
            if not self._folder_synced:  # a new file: its name must survive a power loss too
                fsync_dir(self.path.parent)
                self._folder_synced = True
        except OSError as exc:
            self._roll_back(exc)
            raise storage_error(exc, "the change") from exc
        self._good_end = (self._good_end or 0) + len(data)
        self.records += 1

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _roll_back(self, exc: OSError) -> None:
        """Cut the file back to its last whole record after a failed append."""
        good = self._good_end or 0
        _LOG.warning("%s: append failed (%s); cutting the log back to its last whole record at byte %d",
                     self.path, exc, good)
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, good)
            os.fsync(self._fd)
        except OSError as again:
            self._broken = (
                "the gallery's write log could not be cut back after a failed write "
                f"({again.strerror or again}); changes are refused until the server restarts; searches keep working"
            )
            _LOG.error("%s: %s", self.path, self._broken)

    def _rewrite(self, records: list[LogRecord]) -> int:
        data = FILE_MAGIC + b"".join(encode_frame(seq, r.encode()) for seq, r in enumerate(records))
        write_bytes_atomic(self.path, data)
        return len(data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
