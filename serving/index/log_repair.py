"""`check_index` and `repair_index`: the offline checks behind ``cdd-index check`` and ``cdd-index repair``.

``check`` reads a FAISS index folder without changing it: the live snapshot (every file's sha256, the
manifest, every row of items.jsonl) and its write log (clean, torn tail or damaged, see
`serving.index.log_frames`), and whether the log's records apply to the snapshot. ``repair`` is explicit
and keeps a backup: it copies the live version folder, ``CURRENT`` and the log to a backup folder, applies
every intact record (those before the damage and those found after it, in order, skipping any that no
longer apply) to the snapshot, publishes the result as a new snapshot and deletes the old log. It takes
the folder's writer lock, so it is refused while a server has the folder open.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cdd_common.atomic_file import fsync_dir
from serving.index.atomic_dir import POINTER_FILE, resolve
from serving.index.disk_format import read_info
from serving.index.errors import GalleryIndexError, IndexCorruptError
from serving.index.gallery import GalleryIndex
from serving.index.index_lock import IndexLock
from serving.index.log_frames import LogScan, intact_payload, scan_log
from serving.index.write_log import JOURNAL_PREFIX, LogRecord, journal_path

__all__ = ["check_index", "repair_index"]


def _log_report(path: Path, scan: LogScan) -> dict[str, Any]:
    report: dict[str, Any] = {
        "path": str(path), "exists": path.is_file(), "state": scan.state, "bytes": scan.size,
        "records": len(scan.payloads), "format": "legacy" if scan.legacy else "v2",
    }
    if scan.state == "torn":
        report["torn_tail"] = {"offset": scan.good_end, "bytes": scan.tail_bytes}
    if scan.damage is not None:
        report["damage"] = {
            "offset": scan.damage.offset, "reason": scan.damage.reason,
            "intact_records_after": [seq for _, seq in scan.damage.after],
        }
    return report


def _scan(path: Path) -> tuple[bytes, LogScan]:
    data = path.read_bytes() if path.is_file() else b""
    return data, scan_log(data)


def check_index(directory: str | Path) -> dict[str, Any]:
    """A report on ``directory``'s snapshot and write log; ``ok`` is False when either is damaged or the
    log does not apply to the snapshot (a torn tail is ok: the next open cuts it)."""
    directory = Path(directory)
    report: dict[str, Any] = {"index": str(directory)}
    try:
        version = resolve(directory)
        info = read_info(version)
        report["version"] = version.name
        report["store"] = info.get("store", "faiss")
        index = GalleryIndex.load(directory) if report["store"] == "faiss" else None
    except (GalleryIndexError, OSError, ValueError) as exc:
        return report | {"ok": False, "snapshot": {"ok": False, "error": str(exc)}}
    if index is None:
        return report | {"ok": True, "snapshot": {"ok": True, "note": "items live in Milvus; it keeps its own log"}}
    report["snapshot"] = {"ok": True, "count": len(index)}
    path = journal_path(directory, version.name)
    _, scan = _scan(path)
    report["log"] = _log_report(path, scan)
    report["stale_logs"] = sorted(p.name for p in directory.glob(f"{JOURNAL_PREFIX}*.log") if p != path)
    problems = _apply_all(index, [(seq, p) for seq, p in enumerate(scan.payloads)])
    report["log"]["applies"] = not problems
    if problems:
        report["log"]["not_applying"] = problems
    report["ok"] = scan.state != "damaged" and not problems
    if not report["ok"]:
        report["fix"] = f"cdd-index repair --index {directory} (keeps a backup)"
    report["count_after_replay"] = len(index)
    return report


def _apply_all(index: GalleryIndex, payloads: list[tuple[int, bytes]]) -> list[dict[str, Any]]:
    """Apply records in order; returns the ones that could not be decoded or applied (skipped)."""
    skipped = []
    for seq, payload in payloads:
        try:
            record = LogRecord.decode(payload, index.dim)
            if record.op == "add":
                index.add(record.ids, record.vectors, record.metadata, upsert=record.upsert)
            else:
                index.remove(record.ids)
        except (ValueError, GalleryIndexError) as exc:
            skipped.append({"record": seq, "error": str(exc)})
    return skipped


def repair_index(directory: str | Path, backup: str | Path | None = None) -> dict[str, Any]:
    """Salvage the intact records of ``directory``'s write log into a new snapshot, after copying the live
    version, CURRENT and the log to ``backup`` (default ``<directory>.backup-<utc time>``, must not exist).
    Raises IndexInUse while a server has the folder open, IndexCorruptError when the snapshot itself is
    damaged (repair salvages logs; restore the folder from a backup or rebuild it)."""
    directory = Path(directory)
    lock = IndexLock(directory, "writer")
    try:
        version = resolve(directory)
        try:
            index = GalleryIndex.load(directory)
        except IndexCorruptError as exc:
            raise IndexCorruptError(
                f"the snapshot itself is damaged ({exc}); repair salvages write logs only: restore the folder "
                "from a backup or rebuild it with `cdd-index build`"
            ) from exc
        path = journal_path(directory, version.name)
        data, scan = _scan(path)
        if scan.state == "clean" and not scan.legacy:
            return {"index": str(directory), "repaired": False, "log": _log_report(path, scan),
                    "note": "the write log is clean; nothing to repair"}
        kept = [(seq, payload) for seq, payload in enumerate(scan.payloads)]
        if scan.damage is not None:
            seen = {seq for seq, _ in kept}
            kept += [(seq, intact_payload(data, offset)) for offset, seq in scan.damage.after if seq not in seen]
        target = Path(backup) if backup else directory.with_name(
            f"{directory.name}.backup-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}")
        _backup(directory, version, path, target)
        skipped = _apply_all(index, kept)
        new_version = index.save(directory)
        path.unlink(missing_ok=True)
        fsync_dir(directory)
        recovered = sorted(seq for seq, _ in kept if seq not in {s["record"] for s in skipped})
        highest = max((seq for seq, _ in kept), default=-1)
        return {
            "index": str(directory), "repaired": True, "backup": str(target), "log": _log_report(path, scan),
            "records_applied": len(recovered), "records_skipped": skipped,
            "records_lost": sorted(set(range(highest + 1)) - {seq for seq, _ in kept}),
            "bytes_dropped": scan.tail_bytes, "version": new_version.name, "count": len(index),
        }
    finally:
        lock.release()


def _backup(directory: Path, version: Path, log: Path, target: Path) -> None:
    if target.exists():
        raise FileExistsError(f"{target}: the backup folder exists already; pass another --backup")
    target.mkdir(parents=True)
    shutil.copytree(version, target / version.name)
    shutil.copy2(directory / POINTER_FILE, target / POINTER_FILE)
    if log.is_file():
        shutil.copy2(log, target / log.name)
    fsync_dir(target)
