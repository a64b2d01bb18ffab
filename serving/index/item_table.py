"""`ItemTable`: the gallery's source of truth, one row per item (string id, int64 label, vector, metadata).

Rows live in growable numpy buffers (amortised O(1) append) and are removed by moving the last row into
the hole (O(1) per item), so row order is not insertion order. The int64 ``label`` of an item is what the
search structures (FAISS, torch) store; labels are never reused. Metadata filters are matched here, on
each value's text form (`metadata_text`), the same form clients see on the wire.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from itertools import repeat
from typing import Any

import numpy as np

__all__ = ["ItemTable", "metadata_text"]


def metadata_text(value: Any) -> str:
    """The string form of a metadata value: a ``str`` unchanged, anything else compact sorted JSON
    (3 -> "3", True -> "true", [1, 2] -> "[1,2]"). What clients see, and what filters compare."""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


class ItemTable:
    """Rows of (id, label, float32 vector (dim,), metadata dict). Not thread-safe; the index locks."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._vectors = np.zeros((0, dim), dtype=np.float32)
        self._labels = np.zeros(0, dtype=np.int64)
        self._ids: list[str] = []
        self._meta: list[dict[str, Any]] = []
        self._wire: list[bytes] = []
        self._heads: list[bytes] = []
        self._row_of_id: dict[str, int] = {}
        self._row_of_label: dict[int, int] = {}
        self._postings: dict[tuple[str, str], set[int]] = {}
        self.next_label = 0

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._row_of_id

    @property
    def vectors(self) -> np.ndarray:
        """(N, dim) float32 view of the live rows (do not modify)."""
        return self._vectors[: len(self)]

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64 view of the live rows' labels (do not modify)."""
        return self._labels[: len(self)]

    @property
    def ids(self) -> list[str]:
        """Ids in row order (the list itself; do not modify)."""
        return self._ids

    @property
    def metadata(self) -> list[dict[str, Any]]:
        """Metadata dicts in row order (the list itself; do not modify)."""
        return self._meta

    @property
    def wire(self) -> list[bytes]:
        """Each row's pre-serialised ``cdd.v1.Item`` fields but the score (`serving.response_wire.item_fields`),
        in row order (the list itself; do not modify)."""
        return self._wire

    @property
    def heads(self) -> list[bytes]:
        """Each row's `serving.response_wire.item_head` (its response bytes but the score), in row order
        (the list itself; do not modify)."""
        return self._heads

    def row_of_id(self, item_id: str) -> int:
        """Row of ``item_id``; KeyError when absent."""
        return self._row_of_id[item_id]

    def rows_of_labels(self, labels: np.ndarray) -> np.ndarray:
        """Rows of int64 ``labels`` (same shape); -1 for labels that are absent or -1."""
        flat = list(map(self._row_of_label.get, labels.ravel().tolist(), repeat(-1)))
        return np.asarray(flat, dtype=np.int64).reshape(labels.shape)

    def append(
        self, ids: Sequence[str], vectors: np.ndarray, metadata: Sequence[dict[str, Any]]
    ) -> np.ndarray:
        """Append rows (already validated by the caller); returns their new int64 labels."""
        n, start = len(ids), len(self)
        self._reserve(start + n)
        labels = np.arange(self.next_label, self.next_label + n, dtype=np.int64)
        self._vectors[start : start + n] = vectors
        self._labels[start : start + n] = labels
        if len(metadata) != n:
            raise ValueError(f"{n} ids but {len(metadata)} metadata dicts")
        for offset, item_id in enumerate(ids):
            self._row_of_id[item_id] = start + offset
            self._row_of_label[int(labels[offset])] = start + offset
            self._post(int(labels[offset]), metadata[offset], add=True)
        self._ids.extend(ids)
        self._meta.extend(metadata)
        wire = _wire_fields(ids, metadata)
        self._wire.extend(wire)
        self._heads.extend(_heads(wire))
        self.next_label += n
        return labels

    def remove(self, ids: Sequence[str]) -> np.ndarray:
        """Remove rows by id (all must exist; the caller checks); returns the removed labels."""
        removed = np.zeros(len(ids), dtype=np.int64)
        for i, item_id in enumerate(ids):
            row = self._row_of_id.pop(item_id)
            label = int(self._labels[row])
            removed[i] = label
            del self._row_of_label[label]
            self._post(label, self._meta[row], add=False)
            last = len(self) - 1
            if row != last:
                moved_id = self._ids[last]
                self._vectors[row] = self._vectors[last]
                self._labels[row] = self._labels[last]
                self._ids[row] = moved_id
                self._meta[row] = self._meta[last]
                self._wire[row] = self._wire[last]
                self._heads[row] = self._heads[last]
                self._row_of_id[moved_id] = row
                self._row_of_label[int(self._labels[row])] = row
            self._ids.pop()
            self._meta.pop()
            self._wire.pop()
            self._heads.pop()
        return removed

    def match_labels(self, filter: Mapping[str, Any]) -> np.ndarray:
        """Sorted int64 labels of the items whose metadata has every field of ``filter`` with the same text
        form (`metadata_text`), so the filter "3" (or 3) matches camera 3; a missing field never matches.
        Read from the inverted index: smallest matching set first, intersected with the others."""
        sets = sorted(
            (self._postings.get((str(key), metadata_text(value)), set()) for key, value in filter.items()), key=len
        )
        if not sets:
            return self.labels.copy()
        found = set(sets[0]).intersection(*sets[1:]) if len(sets) > 1 else sets[0]
        return np.sort(np.fromiter(found, dtype=np.int64, count=len(found)))

    def rows_of_matching(self, filter: Mapping[str, Any]) -> np.ndarray:
        """Rows (int64) of the items `match_labels` finds."""
        lookup = self._row_of_label
        return np.asarray([lookup[int(label)] for label in self.match_labels(filter)], dtype=np.int64)

    def _post(self, label: int, meta: Mapping[str, Any], add: bool) -> None:
        for key, value in meta.items():
            posting = (str(key), metadata_text(value))
            if add:
                self._postings.setdefault(posting, set()).add(label)
                continue
            labels = self._postings.get(posting)
            if labels is not None:
                labels.discard(label)
                if not labels:
                    del self._postings[posting]

    @classmethod
    def from_rows(
        cls,
        dim: int,
        ids: Sequence[str],
        labels: np.ndarray,
        vectors: np.ndarray,
        metadata: Sequence[dict[str, Any]],
        next_label: int,
    ) -> ItemTable:
        """Rebuild a table from saved rows (labels preserved)."""
        table = cls(dim)
        n = len(ids)
        table._reserve(n)
        table._vectors[:n] = vectors
        table._labels[:n] = labels
        table._ids = list(ids)
        table._meta = list(metadata)
        table._wire = _wire_fields(table._ids, table._meta)
        table._heads = _heads(table._wire)
        table._row_of_id = {item_id: row for row, item_id in enumerate(table._ids)}
        table._row_of_label = {int(label): row for row, label in enumerate(labels)}
        for label, meta in zip(table.labels.tolist(), table._meta, strict=True):
            table._post(label, meta, add=True)
        table.next_label = next_label
        return table

    def _reserve(self, size: int) -> None:
        capacity = self._vectors.shape[0]
        if size <= capacity:
            return
        new_capacity = max(size, 2 * capacity, 64)
        vectors = np.zeros((new_capacity, self.dim), dtype=np.float32)
        labels = np.zeros(new_capacity, dtype=np.int64)
        vectors[: len(self)] = self.vectors
        labels[: len(self)] = self.labels
        self._vectors, self._labels = vectors, labels


def _wire_fields(ids: Sequence[str], metadata: Sequence[Mapping[str, Any]]) -> list[bytes]:
    from serving.response_wire import item_fields  # it imports metadata_text from here

    return [item_fields(item_id, meta) for item_id, meta in zip(ids, metadata, strict=True)]


def _heads(wire: Sequence[bytes]) -> list[bytes]:
    from serving.response_wire import item_head

    return [item_head(fields) for fields in wire]
