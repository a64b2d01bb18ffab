"""Crash-safe versioned directories: a directory's content is replaced atomically, files are checksummed.

Layout of a directory ``D`` written by `publish`::

    D/CURRENT              one line: the name of the live version folder
    D/v-<utc>-<random>/    the live version: the caller's files + SHA256SUMS (``sha256sum -c`` format)
    D/v-.../               the previous version, kept so a reader that resolved it just before the
                           switch can finish; older versions and killed writers' leftovers are deleted
    D/.lock                writers hold an exclusive flock on it while publishing

A new version is written into ``D/.tmp-*``, every file is fsynced and checksummed, the folder is renamed
to ``v-*``, and only then is ``CURRENT`` replaced (``os.replace``, atomic on POSIX). A kill at any point
leaves ``CURRENT`` naming a complete, verified version.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from cdd_common.atomic_file import fsync_dir, fsync_file
from serving.bundle import sha256_file
from serving.index.errors import IndexCorruptError

__all__ = ["CHECKSUM_FILE", "POINTER_FILE", "publish", "resolve", "verify_checksums"]

POINTER_FILE = "CURRENT"
CHECKSUM_FILE = "SHA256SUMS"
_LOCK_FILE = ".lock"


def publish(directory: str | Path, write: Callable[[Path], None]) -> Path:
    """Make ``write(folder)``'s files the new content of ``directory``; returns the live version folder.

    Writers are serialised by an exclusive lock on ``directory/.lock`` (across processes). Refuses
    (IndexCorruptError) a non-empty ``directory`` that is not a versioned directory, so it never overwrites
    unrelated files. On any exception the old content stays live and the temp folder is removed."""
    root = Path(directory)
    if root.exists() and not (root / POINTER_FILE).is_file() and any(map(_is_foreign, root.iterdir())):
        raise IndexCorruptError(
            f"{root}: exists, is not empty and holds no {POINTER_FILE} file, so it is not a gallery index; "
            "choose an empty or new folder"
        )
    root.mkdir(parents=True, exist_ok=True)
    with open(root / _LOCK_FILE, "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        previous = (root / POINTER_FILE).read_text().strip() if (root / POINTER_FILE).is_file() else None
        final = _write_version(root, write)
        _collect_garbage(root, keep={final.name, previous})
    return final


def _is_foreign(path: Path) -> bool:
    """True for an entry `publish` did not make (a lock, a killed writer's leftovers or a version)."""
    name = path.name
    ours = name in (_LOCK_FILE, ".serve.lock", ".write.lock") or name.startswith(
        (".tmp-", f".{POINTER_FILE}.", "v-", "journal-", "milvus")
    )
    return not ours


def _write_version(root: Path, write: Callable[[Path], None]) -> Path:
    token = f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:8]}"
    tmp = root / f".tmp-{token}"
    pointer_tmp = root / f".{POINTER_FILE}.{token}"
    tmp.mkdir()
    try:
        write(tmp)
        lines = [f"{sha256_file(p)}  {p.name}\n" for p in sorted(tmp.iterdir()) if p.is_file()]
        (tmp / CHECKSUM_FILE).write_text("".join(lines))
        for path in tmp.iterdir():
            fsync_file(path)
        fsync_dir(tmp)
        final = root / f"v-{token}"
        os.replace(tmp, final)
        with open(pointer_tmp, "w") as handle:
            handle.write(final.name + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(pointer_tmp, root / POINTER_FILE)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        pointer_tmp.unlink(missing_ok=True)
        raise
    return final


def resolve(directory: str | Path) -> Path:
    """The live version folder of ``directory``; IndexCorruptError if there is none."""
    root = Path(directory)
    pointer = root / POINTER_FILE
    if not pointer.is_file():
        raise IndexCorruptError(
            f"{root}: no gallery index here ({pointer} is missing); build one with "
            f"`cdd-index build --bundle BUNDLE --images IMAGES --out {root}`"
        )
    name = pointer.read_text().strip()
    folder = root / name
    if not name.startswith("v-") or "/" in name or not folder.is_dir():
        raise IndexCorruptError(
            f"{pointer} names {name!r}, which is not a version folder in {root}; the index is damaged, "
            "rebuild it with `cdd-index build`"
        )
    return folder


def verify_checksums(folder: Path) -> None:
    """Check the sha256 of every file listed in ``folder/SHA256SUMS``; IndexCorruptError on a mismatch."""
    sums = folder / CHECKSUM_FILE
    if not sums.is_file():
        raise IndexCorruptError(f"{sums} is missing; the index is damaged, rebuild it with `cdd-index build`")
    listed: dict[str, str] = {}
    for line in sums.read_text().splitlines():
        digest, _, name = line.partition("  ")
        listed[name] = digest
    for name, expected in listed.items():
        path = folder / name
        if not path.is_file():
            raise IndexCorruptError(
                f"{path} is missing; the index is damaged, rebuild it with `cdd-index build`"
            )
        found = sha256_file(path)
        if found != expected:
            raise IndexCorruptError(
                f"{path}: sha256 is {found}, {CHECKSUM_FILE} expects {expected}; the file was modified or "
                "corrupted after it was written; rebuild the index with `cdd-index build`"
            )


def _collect_garbage(root: Path, keep: set[str | None]) -> None:
    """Delete every version but the live and the previous one, and temp leftovers of killed writers
    (safe: the caller holds the writer lock, so no other writer is mid-way)."""
    for path in root.iterdir():
        stale_version = path.is_dir() and path.name.startswith("v-") and path.name not in keep
        leftover = path.name.startswith(".tmp-") or path.name.startswith(f".{POINTER_FILE}.")
        if stale_version or (leftover and path.is_dir()):
            shutil.rmtree(path, ignore_errors=True)
        elif leftover:
            path.unlink(missing_ok=True)
