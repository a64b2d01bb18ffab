"""`SharedLog`: one gallery write log appended to and followed by several server processes.

With ``cdd-serve --workers N`` every worker process holds its own in-memory copy of the gallery, all
built from the same snapshot, and all changes go through the snapshot's one `WriteLog` file:

- A change takes an exclusive ``flock`` on ``<index dir>/.journal.lock``, first applies the records other
  workers appended since this one last looked (so its checks see every acknowledged change), then
  appends and fsyncs its own record, applies it and only then is acknowledged. A torn tail found under
  the exclusive lock is an append whose writer died (the lock is freed when a process dies): it is cut.
- Before a read (Search, count, Stats) a worker compares the log's size (one ``stat``) with the byte it
  has applied up to; when the log grew it takes the lock shared and applies the new records. So a
  Search that starts after another worker acknowledged a change sees that change.

Records are read from where the last read stopped (`scan_records`), never the whole file again. Damage
raises LogDamagedError naming the file and the byte. Not thread-safe: `DurableGallery` serialises calls.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from serving.index.errors import LogDamagedError
from serving.index.log_frames import FILE_MAGIC, scan_records
from serving.index.write_log import LogRecord, WriteLog

__all__ = ["JOURNAL_LOCK", "SharedLog"]

JOURNAL_LOCK = ".journal.lock"

Apply = Callable[[LogRecord], None]


class SharedLog:
    """The shared log of index folder ``directory`` at ``path``; ``dim`` vector size. Starts at byte 0:
    `catch_up` applies everything in the file."""

    def __init__(self, directory: Path, path: Path, dim: int) -> None:
        self.path = Path(path)
        self.log = WriteLog(self.path, dim)
        self.log.records = 0
        self.log._good_end = 0  # noqa: SLF001 - the writer's view is this object's to keep
        self._lock_handle = open(Path(directory) / JOURNAL_LOCK, "a+")  # noqa: SIM115 - held until close()
        self.applied_end = 0
        self.applied_records = 0

    def stale(self) -> bool:
        """True when the file holds bytes this process has not applied (one stat, no lock)."""
        try:
            return os.stat(self.path).st_size != self.applied_end
        except FileNotFoundError:
            return self.applied_end != 0

    def catch_up(self, apply: Apply) -> int:
        """Apply the records appended since the last call (shared lock); returns how many."""
        if not self.stale():
            return 0
        with self._locked(fcntl.LOCK_SH):
            return self._read(apply, cut_torn=False)

    def append(self, make_record: Callable[[], LogRecord], apply: Apply) -> LogRecord:
        """Under the exclusive lock: apply others' records, then ``make_record`` (it validates against the now
        current gallery and may raise), append and fsync it, apply it; returns it. Raises what
        ``make_record`` raises, StorageFull / StorageFailed (the log cut back, nothing applied)."""
        with self._locked(fcntl.LOCK_EX):
            self._read(apply, cut_torn=True)
            record = make_record()
            self.log.records = self.applied_records
            self.log._good_end = self.applied_end  # noqa: SLF001
            self.log.append(record)
            self.applied_end = self.log._good_end  # noqa: SLF001
            self.applied_records = self.log.records
            apply(record)
            return record

    def close(self) -> None:
        self.log.close()
        self._lock_handle.close()

    @contextmanager
    def _locked(self, mode: int) -> Iterator[None]:
        fcntl.flock(self._lock_handle.fileno(), mode)
        try:
            yield
        finally:
            fcntl.flock(self._lock_handle.fileno(), fcntl.LOCK_UN)

    def _read(self, apply: Apply, cut_torn: bool) -> int:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.applied_end)
                data = handle.read()
        except FileNotFoundError:
            return 0
        start = 0
        if self.applied_end == 0 and data:
            if not data.startswith(FILE_MAGIC):
                if FILE_MAGIC.startswith(data) and cut_torn:
                    self._cut(0)
                    return 0
                if FILE_MAGIC.startswith(data):
                    return 0
                raise LogDamagedError(f"{self.path}: the file does not start with the write-log marker "
                                      f"{FILE_MAGIC!r}; see `cdd-index check --index {self.path.parent}`")
            start = len(FILE_MAGIC)
        scan = scan_records(data, start, self.applied_records)
        if scan.state == "damaged":
            assert scan.damage is not None
            where = self.applied_end + scan.damage.offset
            raise LogDamagedError(f"{self.path}: the write log is damaged at byte {where}: {scan.damage.reason}; "
                                  f"see `cdd-index check --index {self.path.parent}`")
        for payload in scan.payloads:
            try:
                record = LogRecord.decode(payload, self.log.dim)
            except ValueError as exc:
                raise LogDamagedError(f"{self.path}: record #{self.applied_records} passes its checksums but "
                                      f"{exc}") from exc
            apply(record)
            self.applied_records += 1
        self.applied_end += scan.good_end
        if scan.state == "torn" and cut_torn:
            self._cut(self.applied_end)
        return len(scan.payloads)

    def _cut(self, size: int) -> None:
        """Cut a dead writer's torn tail (only under the exclusive lock)."""
        with open(self.path, "r+b") as handle:
            handle.truncate(size)
            os.fsync(handle.fileno())
