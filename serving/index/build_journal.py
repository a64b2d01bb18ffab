"""`BuildJournal`: the committed part of an index build, on disk, so a killed build resumes instead of
starting over.

``cdd-index build --out DIR`` keeps its journal in ``DIR.partial/``:

    DIR.partial/plan.json            what is being built (bundle sha256, index type, options, the item list's
                                     sha256 and count); a build with another plan refuses to resume
    DIR.partial/chunk-000000.npz     one committed chunk: ``start``/``end`` (the item positions it covers,
                                     a prefix of the list), ``positions`` and float32 ``vectors`` of the
                                     embedded items, ``skipped`` positions and their ``reasons``

Chunks cover consecutive ranges of the item list from position 0, so what is committed is always a
prefix. Each chunk is written to a temporary file, fsynced, renamed, and the folder fsynced: after a kill
(even SIGKILL) the journal holds whole chunks only. The journal is deleted once the index is published.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cdd_common.atomic_file import atomic_path, fsync_dir
from serving.index.errors import GalleryIndexError

__all__ = ["BuildJournal", "Chunk", "ChunkBuffer", "JournalMismatch", "journal_dir", "plan_for"]

_PLAN = "plan.json"


class JournalMismatch(GalleryIndexError):
    """The journal beside the output was written for another build (bundle, items or index settings)."""


@dataclass(frozen=True)
class Chunk:
    """Positions ``start`` <= p < ``end`` of the item list: the embedded ones (``positions``, ``vectors``
    float32 (n, dim)) and the unreadable ones (``skipped`` with their ``reasons``)."""

    start: int
    end: int
    positions: np.ndarray
    vectors: np.ndarray
    skipped: list[int]
    reasons: list[str]


def journal_dir(out: Path) -> Path:
    """Where the journal of a build writing ``out`` lives: ``out`` with ``.partial`` appended."""
    return out.with_name(out.name + ".partial")


def plan_for(bundle_sha256: str, index_type: str, options: dict[str, Any] | None,
             items: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """The plan of a build: bundle, index settings and the (id, path) list's sha256 and count."""
    digest = hashlib.sha256()
    for item_id, path in items:
        digest.update(f"{item_id}\t{path}\n".encode())
    return {"bundle_sha256": bundle_sha256, "index_type": index_type, "options": dict(sorted((options or {}).items())),
            "items_sha256": digest.hexdigest(), "items": len(items)}


def _write_durable(target: Path, write: Any) -> None:
    with atomic_path(target) as tmp, open(tmp, "wb") as handle:
        write(handle)


class BuildJournal:
    """Open with `open`; `chunks` replays what is committed, `commit` adds a chunk, `remove` ends it."""

    def __init__(self, directory: Path, plan: dict[str, Any]) -> None:
        self.directory = directory
        self.plan = plan
        self._chunks = sorted(directory.glob("chunk-*.npz"))

    @classmethod
    def open(cls, directory: Path, plan: dict[str, Any], restart: bool = False) -> BuildJournal:
        """The journal in ``directory`` (created when absent). Raises JournalMismatch when it holds another
        plan, unless ``restart`` (then it is emptied)."""
        plan_file = directory / _PLAN
        if directory.exists() and restart:
            shutil.rmtree(directory)
        if plan_file.is_file():
            found = json.loads(plan_file.read_text())
            if found != plan:
                changed = sorted(key for key in plan if found.get(key) != plan[key])
                raise JournalMismatch(
                    f"{directory} holds a build journal for another build (different {', '.join(changed)}); "
                    "rerun with --restart to discard it, or delete that folder"
                )
            return cls(directory, plan)
        directory.mkdir(parents=True, exist_ok=True)
        fsync_dir(directory.parent)
        _write_durable(plan_file, lambda handle: handle.write(json.dumps(plan, indent=2).encode()))
        return cls(directory, plan)

    @property
    def committed(self) -> int:
        """Items (a prefix of the list) whose chunk is on disk."""
        return self._end

    @property
    def _end(self) -> int:
        if not self._chunks:
            return 0
        with np.load(self._chunks[-1]) as data:
            return int(data["end"])

    def chunks(self) -> Iterator[Chunk]:
        """Committed chunks in order. Raises JournalMismatch when they do not tile a prefix."""
        expected = 0
        for path in self._chunks:
            with np.load(path) as data:
                chunk = Chunk(int(data["start"]), int(data["end"]), data["positions"].copy(),
                              data["vectors"].copy(), data["skipped"].tolist(), data["reasons"].tolist())
            if chunk.start != expected:
                raise JournalMismatch(f"{path} starts at item {chunk.start}, expected {expected}; rerun with --restart")
            expected = chunk.end
            yield chunk

    def commit(self, chunk: Chunk) -> None:
        """Write ``chunk`` durably (it must start where the committed prefix ends)."""
        target = self.directory / f"chunk-{len(self._chunks):06d}.npz"
        arrays = {"start": np.int64(chunk.start), "end": np.int64(chunk.end),
                  "positions": np.asarray(chunk.positions, dtype=np.int64),
                  "vectors": np.asarray(chunk.vectors, dtype=np.float32),
                  "skipped": np.asarray(chunk.skipped, dtype=np.int64),
                  "reasons": np.asarray(chunk.reasons, dtype=str)}
        _write_durable(target, lambda handle: np.savez(handle, **arrays))
        self._chunks.append(target)

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class ChunkBuffer:
    """Collects embedded and skipped items of a build (positions relative to ``offset``, the committed
    prefix it resumes after) and commits a chunk to ``journal`` every ``commit_every`` embedded items."""

    def __init__(self, journal: BuildJournal, offset: int, commit_every: int) -> None:
        if commit_every < 1:
            raise ValueError(f"commit_every must be >= 1 image, got {commit_every}")
        self._journal = journal
        self._offset = offset
        self._start = offset
        self._every = commit_every
        self._positions: list[int] = []
        self._vectors: list[np.ndarray] = []
        self._skipped: list[tuple[int, str]] = []

    def add(self, positions: Sequence[int], vectors: np.ndarray) -> None:
        """Embedded items (in list order, after every earlier one was added or skipped)."""
        self._positions.extend(self._offset + p for p in positions)
        self._vectors.append(np.asarray(vectors, dtype=np.float32))
        if len(self._positions) >= self._every:
            self._commit(self._positions[-1] + 1)

    def skip(self, position: int, reason: str) -> None:
        self._skipped.append((self._offset + position, reason))

    def close(self, end: int) -> None:
        """Commit everything left; ``end`` is the number of items of this run (relative to ``offset``)."""
        if self._positions or self._skipped or self._start < self._offset + end:
            self._commit(self._offset + end)

    def _commit(self, end: int) -> None:
        skipped = [(p, r) for p, r in self._skipped if p < end]
        self._skipped = [(p, r) for p, r in self._skipped if p >= end]
        dim = self._vectors[0].shape[1] if self._vectors else 0
        vectors = np.concatenate(self._vectors) if self._vectors else np.zeros((0, dim), dtype=np.float32)
        self._journal.commit(Chunk(self._start, end, np.asarray(self._positions, dtype=np.int64), vectors,
                                   [p for p, _ in skipped], [r for _, r in skipped]))
        self._start = end
        self._positions, self._vectors = [], []
