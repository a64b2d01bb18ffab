"""`DurableGallery`: the FAISS gallery backend with acknowledged-means-durable writes.

A `GalleryIndex` snapshot (the live version of the index folder) plus a `WriteLog` of every change made
since. A change is validated, appended to the log and fsynced, and only then applied in memory and
acknowledged. At open the log of the live version is replayed (a torn tail is cut and reported, damage
refuses the start: see `serving.index.write_log`). `persist` folds the log into a new snapshot (a new
version folder, then a new empty log, then the old log is deleted); the server calls it periodically and at
shutdown (SIGTERM). A change or a snapshot that cannot reach the disk (full, I/O error) raises StorageFull /
StorageFailed and leaves the log and the live snapshot as they were; the gallery keeps serving reads and
takes changes again once the disk has room. An `IndexLock` keeps other servers and `cdd-index` writers out
of a folder a server has open, and serialises `cdd-index` writers among themselves.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from serving.errors import ServiceError
from serving.index.atomic_dir import resolve
from serving.index.errors import GalleryIndexError, LogDamagedError, storage_error
from serving.index.found_items import FoundItems
from serving.index.gallery import GalleryIndex, Hit
from serving.index.index_lock import IndexLock
from serving.index.shared_log import SharedLog
from serving.index.write_log import JOURNAL_PREFIX, LogRecord, WriteLog, journal_path

__all__ = ["DurableGallery"]

_LOG = logging.getLogger("serving.index")


class DurableGallery:
    """A `serving.index.gallery_backend.GalleryBackend` over FAISS files in ``directory``. Use `open`."""

    store = "faiss"

    def __init__(self, directory: Path, index: GalleryIndex, log: WriteLog, lock: IndexLock) -> None:
        self.directory = directory
        self.index = index
        self._log = log
        self._lock = lock
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        self._shared: SharedLog | None = None
        self.owns_lock = True
        self.replayed = log.records

    @classmethod
    def open(
        cls,
        directory: str | Path,
        expected_bundle_sha256: str | None = None,
        *,
        device: str = "cpu",
        role: str = "server",
        snapshot_interval_s: float = 0.0,
        lock: IndexLock | None = None,
    ) -> DurableGallery:
        """Lock ``directory`` for ``role`` ("server" or "writer", see `IndexLock`; or use ``lock``, taken
        already), load its live version, replay its log; with ``snapshot_interval_s`` > 0 fold the log into a
        snapshot that often. `close` releases the lock it took (not a given one). Raises IndexInUse,
        IndexBundleMismatch, IndexCorruptError."""
        directory = Path(directory)
        owns_lock = lock is None
        lock = lock or IndexLock(directory, role)
        try:
            index = GalleryIndex.load(directory, expected_bundle_sha256, device=device)
            version = resolve(directory).name
            log = WriteLog(journal_path(directory, version), index.dim)
            for seq, record in enumerate(log.replay()):
                _apply(index, record, log.path, seq)
            _delete_stale_logs(directory, keep=log.path)
        except BaseException:
            if owns_lock:
                lock.release()
            raise
        gallery = cls(directory, index, log, lock)
        gallery.owns_lock = owns_lock
        if gallery.replayed:
            _LOG.info("replayed %d logged change(s) of %s", gallery.replayed, directory)
        if snapshot_interval_s > 0:
            gallery._timer = threading.Thread(
                target=gallery._snapshot_every, args=(snapshot_interval_s,), name="cdd-snapshot", daemon=True
            )
            gallery._timer.start()
        return gallery

    @classmethod
    def open_worker(
        cls, directory: str | Path, expected_bundle_sha256: str | None = None, *, device: str = "cpu",
        lock: IndexLock,
    ) -> DurableGallery:
        """One `cdd-serve --workers` process's view: the live snapshot plus the `SharedLog` that every worker
        appends to and follows (see `serving.index.shared_log`). ``lock``: the server lock inherited from the
        parent, which folds the log into snapshots before the workers start and after they stop; a worker
        never writes a snapshot (`persist` does nothing). Raises IndexBundleMismatch, IndexCorruptError."""
        directory = Path(directory)
        try:
            index = GalleryIndex.load(directory, expected_bundle_sha256, device=device)
            shared = SharedLog(directory, journal_path(directory, resolve(directory).name), index.dim)
            shared.catch_up(lambda record: _apply(index, record, shared.path, shared.applied_records))
        except BaseException:
            lock.release()
            raise
        gallery = cls(directory, index, shared.log, lock)
        gallery._shared = shared
        gallery.replayed = shared.applied_records
        return gallery

    def _follow(self) -> None:
        """Apply the changes other workers acknowledged since this one last looked (one stat when none)."""
        shared = self._shared
        if shared is not None and shared.stale():
            with self._mutex:
                shared.catch_up(self._apply_record)

    def _apply_record(self, record: LogRecord) -> None:
        assert self._shared is not None
        _apply(self.index, record, self._shared.path, self._shared.applied_records)

    # -- the GalleryBackend interface -------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.index.dim

    @property
    def index_type(self) -> str:
        return self.index.index_type

    @property
    def bundle_sha256(self) -> str | None:
        return self.index.bundle_sha256

    def __len__(self) -> int:
        self._follow()
        return len(self.index)

    def __contains__(self, item_id: object) -> bool:
        self._follow()
        return item_id in self.index

    def search(
        self, queries: np.ndarray, k: int, filter: dict[str, Any] | None = None, *, columns: bool = False
    ) -> list[list[Hit]] | list[FoundItems]:
        """See `GalleryIndex.search` (a worker first applies the changes other workers acknowledged)."""
        self._follow()
        return self.index.search(queries, k, filter, columns=columns)

    def add(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        metadata: Sequence[dict[str, Any]] | None = None,
        *,
        upsert: bool = False,
    ) -> int:
        """`GalleryIndex.add`, logged and fsynced before it is applied; returns the number of items."""
        if self._shared is not None:
            def make() -> LogRecord:
                return LogRecord("add", *self.index.check_add(ids, vectors, metadata, upsert=upsert), upsert)

            with self._mutex:
                return len(self._shared.append(make, self._apply_record).ids)
        with self._mutex:
            ids, array, meta = self.index.check_add(ids, vectors, metadata, upsert=upsert)
            self._log.append(LogRecord("add", ids, array, meta, upsert))
            return self.index.add(ids, array, meta, upsert=upsert)

    def remove(self, ids: Sequence[str]) -> int:
        """`GalleryIndex.remove`, logged and fsynced before it is applied; returns the number removed."""
        if self._shared is not None:
            with self._mutex:
                record = self._shared.append(lambda: LogRecord("remove", self.index.check_remove(ids)),
                                             self._apply_record)
                return len(record.ids)
        with self._mutex:
            unique = self.index.check_remove(ids)
            self._log.append(LogRecord("remove", unique))
            return self.index.remove(unique)

    def persist(self) -> Path | None:
        """Fold the log into a new snapshot; returns its version folder, or None when nothing was logged.
        Raises StorageFull / StorageFailed when the snapshot cannot be written; the previous snapshot and the
        log then stay live (a snapshot that became live before a late step failed is kept). A worker's view
        (`open_worker`) never folds: its parent does, with every worker stopped."""
        if self._shared is not None:
            return None
        with self._mutex:
            if self._log.records == 0:
                return None
            live = resolve(self.directory).name
            try:
                version = self.index.save(self.directory)
            except OSError as exc:
                version = resolve(self.directory)
                if version.name == live:
                    _LOG.warning("snapshot of %s failed (%s); the previous snapshot and the write log stay live",
                                 self.directory, exc)
                    raise storage_error(exc, "the snapshot") from exc
                _LOG.warning("snapshot %s became live, but a later step failed (%s)", version.name, exc)
            old = self._log
            self._log = WriteLog(journal_path(self.directory, version.name), self.index.dim)
            old.close()
            try:
                old.path.unlink(missing_ok=True)
            except OSError as exc:  # harmless: a log of a version that is not live is deleted at the next open
                _LOG.warning("could not delete the folded log %s (%s)", old.path, exc)
            return version

    def stats(self) -> dict[str, Any]:
        self._follow()
        return self.index.stats() | {"logged_changes": self._log.records, "directory": str(self.directory)}

    def close(self) -> None:
        """Stop the snapshot timer, fold the log into a snapshot, release the folder. Idempotent."""
        self._stop.set()
        if self._timer is not None:
            self._timer.join()
            self._timer = None
        try:
            self.persist()
        except ServiceError as exc:  # the log keeps every change; the next start replays it
            _LOG.error("snapshot of %s at close failed: %s; the write log keeps every change and is replayed at "
                       "the next start", self.directory, exc)
        finally:
            self._log.close()
            if self._shared is not None:
                self._shared.close()
            self.index.close()
            if self.owns_lock:
                self._lock.release()

    def _snapshot_every(self, seconds: float) -> None:
        while not self._stop.wait(seconds):
            try:
                version = self.persist()
                if version is not None:
                    _LOG.info("snapshot %s written; log folded", version.name)
            except ServiceError:  # a full disk: `persist` logged one line; the log keeps every change
                pass
            except Exception:  # logged; the log keeps every change, the next try folds it
                _LOG.exception("periodic snapshot of %s failed", self.directory)


def _apply(index: GalleryIndex, record: LogRecord, path: Path, seq: int) -> None:
    """Apply one replayed record; a record the snapshot cannot take means the log and snapshot disagree."""
    try:
        if record.op == "add":
            index.add(record.ids, record.vectors, record.metadata, upsert=record.upsert)
        else:
            index.remove(record.ids)
    except GalleryIndexError as exc:
        raise LogDamagedError(
            f"{path}: record #{seq} ({record.op} of {len(record.ids)} id(s)) does not apply to the snapshot: {exc}; "
            f"the log does not belong to this snapshot; see `cdd-index check --index {path.parent}`"
        ) from exc


def _delete_stale_logs(directory: Path, keep: Path) -> None:
    """Logs of versions that are no longer live were folded into the live snapshot already."""
    for path in directory.glob(f"{JOURNAL_PREFIX}*.log"):
        if path != keep:
            path.unlink(missing_ok=True)
