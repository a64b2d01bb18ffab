"""`GalleryIndex`: unit-norm embeddings with string ids and metadata, searchable, saved atomically.

The index keeps every vector in an `ItemTable` (the source of truth: saving, filters, exact re-ranking,
rebuilding) and a search structure built from it: FAISS (flat / ivf / ivfpq / hnsw, on a GPU when faiss
has GPU support) or, for "flat" on a GPU without faiss GPU support, torch. Scores are inner products of
unit vectors (cosine similarity), higher is closer. Every public method takes one lock, so the gRPC
server may add and remove while other threads search.

Saved with `save` as a versioned folder (`serving.index.atomic_dir`: crash-safe, checksummed) holding
the files described in `serving.index.disk_format`.
"""

from __future__ import annotations

import json
import math
import operator
import threading
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from serving.index.atomic_dir import publish, resolve, verify_checksums
from serving.index.disk_format import (
    FORMAT,
    FORMAT_VERSION,
    STRUCTURE_FILE,
    read_info,
    read_rows,
    write_files,
)
from serving.index.errors import (
    DimensionError,
    DuplicateIdError,
    GalleryIndexError,
    IndexBundleMismatch,
    IndexCorruptError,
    InvalidVectorsError,
    UnknownIdError,
)
from serving.index.exact_search import exact_top_k
from serving.index.item_table import ItemTable
from serving.index.searcher import DEVICES, Searcher, new_searcher, resolve_engine

__all__ = ["DEVICES", "INDEX_TYPES", "OPTION_KEYS", "GalleryIndex", "Hit"]

INDEX_TYPES = ("flat", "ivf", "ivfpq", "hnsw")
"""Index types: exact inner product, then the approximate ones for large galleries."""
OPTION_KEYS = frozenset(
    {"nlist", "nprobe", "pq_m", "pq_nbits", "refine", "hnsw_m", "ef_search", "ef_construction", "seed", "gpu"}
)
"""Tuning options: ivf/ivfpq ``nlist``, ``nprobe``; ivfpq ``pq_m``, ``pq_nbits``, ``refine`` (candidates per
result re-ranked with exact vectors, default 4); hnsw ``hnsw_m``, ``ef_search``, ``ef_construction``;
k-means ``seed``; ``gpu`` ordinal."""
_MIN_TRAIN = 256
_RETRAIN_GROWTH = 8
_NORM_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Hit:
    """One search result: item ``id``, ``score`` (cosine similarity, higher is closer), a metadata copy."""

    id: str
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class GalleryIndex:
    """Searchable gallery of float32 unit-norm vectors of dimension ``dim`` with string ids and metadata.

    ``index_type`` is one of INDEX_TYPES; ``device`` one of DEVICES ("auto" = GPU when usable);
    ``options`` keys are OPTION_KEYS; ``bundle_sha256`` is the `Manifest.sha256()` of the bundle whose
    engine produced the vectors. Raises GalleryIndexError subclasses (see `serving.index.errors`)."""

    def __init__(
        self,
        dim: int,
        index_type: str = "flat",
        *,
        metric: str = "cosine",
        bundle_sha256: str | None = None,
        device: str = "cpu",
        options: dict[str, Any] | None = None,
        created: str | None = None,
    ) -> None:
        if index_type not in INDEX_TYPES:
            raise GalleryIndexError(f"index_type must be one of {INDEX_TYPES}, found {index_type!r}")
        if metric != "cosine":
            raise GalleryIndexError(
                f"metric must be 'cosine' (inner product of unit vectors), found {metric!r}; re-export the "
                "bundle with L2-normalised cosine embeddings"
            )
        if not isinstance(dim, int) or dim < 1:
            raise DimensionError(f"dim must be a positive integer, found {dim!r}")
        unknown = sorted(set(options or {}) - OPTION_KEYS)
        if unknown:
            raise GalleryIndexError(f"unknown index option(s) {unknown}; valid: {sorted(OPTION_KEYS)}")
        self.dim = dim
        self.index_type = index_type
        self.metric = metric
        self.bundle_sha256 = bundle_sha256
        self.created = created or _now()
        self.engine = resolve_engine(device, index_type)
        self._options = dict(options or {})
        self._lock = threading.RLock()
        self._table = ItemTable(dim)
        self._searcher: Searcher = self._new_searcher()
        self._trained_on = 0

    # ------------------------------------------------------------------ content
    def __len__(self) -> int:
        with self._lock:
            return len(self._table)

    def __contains__(self, item_id: object) -> bool:
        with self._lock:
            return item_id in self._table

    def add(
        self, ids: Sequence[str], vectors: np.ndarray, metadata: Sequence[dict[str, Any]] | None = None
    ) -> None:
        """Add items: ``ids`` (unique non-empty strings), ``vectors`` float32 (N, dim) unit-norm rows,
        ``metadata`` JSON-serialisable dicts (default empty). All or nothing.

        Raises DuplicateIdError, DimensionError, InvalidVectorsError."""
        ids = list(ids)
        metadata = [{} for _ in ids] if metadata is None else [dict(m) for m in metadata]
        array = self._check_vectors(vectors, len(ids))
        self._check_items(ids, metadata)
        with self._lock:
            existing = [item_id for item_id in ids if item_id in self._table]
            if existing:
                raise DuplicateIdError(
                    f"{len(existing)} id(s) already in the index, e.g. {existing[:5]}; remove them first or "
                    "use other ids; nothing was added"
                )
            labels = self._table.append(ids, array, metadata)
            if self._searcher.is_trained:
                self._searcher.add(array, labels)

    def remove(self, ids: Sequence[str]) -> int:
        """Remove items by id; returns how many. Raises UnknownIdError (nothing removed) if any is absent."""
        unique = list(dict.fromkeys(ids))
        with self._lock:
            unknown = [item_id for item_id in unique if item_id not in self._table]
            if unknown:
                raise UnknownIdError(
                    f"{len(unknown)} id(s) not in the index, e.g. {unknown[:5]}; nothing was removed"
                )
            labels = self._table.remove(unique)
            if self._searcher.is_trained and labels.size:
                self._searcher.remove(labels)
            return len(unique)

    def get(self, item_id: str) -> tuple[np.ndarray, dict[str, Any]]:
        """(vector copy (dim,), metadata copy) of one item; UnknownIdError if absent."""
        with self._lock:
            if item_id not in self._table:
                raise UnknownIdError(f"id {item_id!r} is not in the index")
            row = self._table.row_of_id(item_id)
            return self._table.vectors[row].copy(), dict(self._table.metadata[row])

    def snapshot(self) -> tuple[list[str], np.ndarray, list[dict[str, Any]]]:
        """Consistent copies of (ids, vectors (N, dim), metadata) in row order."""
        with self._lock:
            meta = [dict(m) for m in self._table.metadata]
            return list(self._table.ids), self._table.vectors.copy(), meta

    # ------------------------------------------------------------------ search
    def search(
        self, queries: np.ndarray, k: int, filter: dict[str, Any] | None = None, *, exact: bool = False
    ) -> list[list[Hit]]:
        """Top-``k`` hits per query row, best first. ``queries`` float32 (Q, dim); ``filter`` keeps only items
        whose ``metadata[field]`` has the text form (`metadata_text`) of ``value`` for every given field, so
        {"camera": 3} and {"camera": "3"} match camera 3 (a missing field never matches); applied
        before the top-k cut, so each list holds min(k, matching items) hits for exact search; ``exact``
        forces brute force over all vectors. Approximate types may return fewer than k hits.
        Raises DimensionError, InvalidVectorsError, GalleryIndexError (k < 1)."""
        array = self._check_queries(queries)
        try:
            valid = operator.index(k) >= 1
        except TypeError:
            valid = False
        if not valid:
            raise GalleryIndexError(f"k must be a positive integer, found {k!r}")
        k = operator.index(k)
        with self._lock:
            n = len(self._table)
            mask = self._table.match(filter) if filter else None
            matching = n if mask is None else int(mask.sum())
            if matching == 0:
                return [[] for _ in range(array.shape[0])]
            if not exact:
                self._ensure_trained()
            if exact or not self._searcher.is_trained or (mask is not None and matching * 8 < n):
                rows = None if mask is None else np.flatnonzero(mask)
                return self._to_hits(self._exact(array, k, rows))
            return self._to_hits(self._structure_search(array, k, mask, matching))

    # ------------------------------------------------------------------ maintenance
    def rebuild(self) -> None:
        """Rebuild the search structure from the stored vectors (retrains ivf / ivfpq on the items)."""
        with self._lock:
            self._rebuild_searcher()

    def stats(self) -> dict[str, Any]:
        """JSON-serialisable summary: count, dim, metric, index_type, bundle_sha256, created, trained,
        search engine facts (faiss version, nlist/nprobe..., tombstones), options."""
        with self._lock:
            search = (
                self._searcher.describe() if self._searcher.is_trained else {"engine": "exact (untrained)"}
            )
            return {
                "count": len(self._table),
                "dim": self.dim,
                "metric": self.metric,
                "index_type": self.index_type,
                "bundle_sha256": self.bundle_sha256,
                "created": self.created,
                "trained": bool(self._searcher.is_trained),
                "search": search,
                "options": dict(self._options),
            }

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> Path:
        """Write the index into ``directory`` atomically (the previous content stays valid until the new one
        is complete); returns the version folder. Trains ivf / ivfpq first when it has enough items."""
        with self._lock:
            self._ensure_trained(retrain_if_grown=True)
            structure = None
            if self.index_type != "flat" and self._searcher.is_trained:
                structure = self._searcher.serialize()
            info = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "bundle_sha256": self.bundle_sha256,
                "dim": self.dim,
                "metric": self.metric,
                "index_type": self.index_type,
                "count": len(self._table),
                "next_label": self._table.next_label,
                "created": self.created,
                "saved": _now(),
                "trained": structure is not None,
                "options": dict(self._options),
                "search": self._searcher.describe() if self._searcher.is_trained else {},
            }
            return publish(directory, lambda folder: write_files(folder, info, self._table, structure))

    @staticmethod
    def read_info(directory: str | Path) -> dict[str, Any]:
        """The saved ``index.json`` of the live version (no vectors read, no checksums verified)."""
        folder = resolve(directory)
        return read_info(folder)

    @classmethod
    def load(
        cls,
        directory: str | Path,
        expected_bundle_sha256: str | None = None,
        *,
        compatible: Collection[str] = (),
        device: str = "cpu",
        verify: bool = True,
    ) -> GalleryIndex:
        """Load the live version of ``directory``. With ``expected_bundle_sha256`` refuse an index built
        from another bundle (IndexBundleMismatch) unless that bundle's sha256 is in ``compatible`` (the served
        manifest's ``compatible_with``). ``verify`` checks every file's sha256 first.
        Raises IndexCorruptError for missing / modified / inconsistent files."""
        folder = resolve(directory)
        if verify:
            verify_checksums(folder)
        info = read_info(folder)
        built_with = info.get("bundle_sha256")
        if expected_bundle_sha256 is not None and built_with != expected_bundle_sha256 and built_with not in compatible:
            raise IndexBundleMismatch(
                f"index {directory} was built with bundle sha256 {built_with}, but the bundle being served has "
                f"sha256 {expected_bundle_sha256} and does not list it in its manifest's compatible_with; "
                "embeddings of different models (or precisions) cannot be compared; rebuild it: cdd-index build "
                f"--bundle BUNDLE --images IMAGES --out {directory}"
            )
        ids, labels, metadata, vectors = read_rows(folder, info)
        options = {k: v for k, v in info.get("options", {}).items() if k in OPTION_KEYS}
        index = cls(
            info["dim"],
            info["index_type"],
            metric=info["metric"],
            bundle_sha256=info.get("bundle_sha256"),
            device=device,
            options=options,
            created=info.get("created"),
        )
        index._table = ItemTable.from_rows(
            info["dim"], ids, labels, vectors, metadata, int(info["next_label"])
        )
        index._restore_searcher(folder)
        return index

    # ------------------------------------------------------------------ internals
    def _restore_searcher(self, folder: Path) -> None:
        """Search structure of a loaded version: the serialised FAISS index, else rebuilt from the table."""
        structure = folder / STRUCTURE_FILE
        n = len(self._table)
        if not structure.is_file() or self.engine == "torch-cuda":
            if self._searcher.is_trained and n:
                self._searcher.add(self._table.vectors, self._table.labels)
            return
        from serving.index.faiss_searcher import FaissSearcher

        use_gpu = self.engine == "faiss-gpu"
        data = structure.read_bytes()
        self._searcher = FaissSearcher.deserialize(data, self.index_type, self.dim, self._options, use_gpu)
        self._trained_on = n
        if self._searcher.ntotal != n:
            raise IndexCorruptError(
                f"{structure} holds {self._searcher.ntotal} vectors but {folder} lists {n} items; "
                "rebuild the index with `cdd-index build`"
            )

    def _new_searcher(self) -> Searcher:
        return new_searcher(self.engine, self.index_type, self.dim, self._options)

    def _ensure_trained(self, retrain_if_grown: bool = False) -> None:
        """Train an ivf / ivfpq structure once there are _MIN_TRAIN items (or retrain after large growth)."""
        if self.index_type not in ("ivf", "ivfpq"):
            return
        n = len(self._table)
        grown = retrain_if_grown and self._trained_on > 0 and n > _RETRAIN_GROWTH * self._trained_on
        if (self._searcher.is_trained and not grown) or n < _MIN_TRAIN:
            return
        self._rebuild_searcher()

    def _rebuild_searcher(self) -> None:
        """A fresh structure holding every stored item (trained on them when the type needs training)."""
        self._searcher = self._new_searcher()
        self._trained_on = 0
        n = len(self._table)
        if n == 0:
            return
        if not self._searcher.is_trained:
            self._searcher.train(self._table.vectors)
            self._trained_on = n
        self._searcher.add(self._table.vectors, self._table.labels)

    def _check_vectors(self, vectors: Any, n: int) -> np.ndarray:
        array = np.asarray(vectors)
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise DimensionError(f"vectors must have shape (N, {self.dim}), found {tuple(array.shape)}")
        if array.shape[0] != n:
            raise InvalidVectorsError(f"got {n} id(s) but {array.shape[0]} vector(s); they must line up")
        array = np.ascontiguousarray(array, dtype=np.float32)
        if not np.isfinite(array).all():
            raise InvalidVectorsError("vectors contain NaN or infinity; check the engine output")
        norms = np.linalg.norm(array, axis=1)
        if n and np.abs(norms - 1.0).max() > _NORM_TOLERANCE:
            raise InvalidVectorsError(
                f"vectors must be L2-normalised (norm 1 +- {_NORM_TOLERANCE}), found norms in "
                f"[{norms.min():.4g}, {norms.max():.4g}]; divide each row by its norm"
            )
        return array

    def _check_queries(self, queries: Any) -> np.ndarray:
        array = np.asarray(queries)
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise DimensionError(
                f"queries must have shape (Q, {self.dim}), found {tuple(array.shape)}; "
                "use queries.reshape(1, -1) for a single query"
            )
        array = np.ascontiguousarray(array, dtype=np.float32)
        if not np.isfinite(array).all():
            raise InvalidVectorsError("queries contain NaN or infinity")
        return array

    @staticmethod
    def _check_items(ids: list[Any], metadata: list[dict[str, Any]]) -> None:
        if len(metadata) != len(ids):
            raise InvalidVectorsError(f"got {len(ids)} id(s) but {len(metadata)} metadata dict(s)")
        bad = [item_id for item_id in ids if not isinstance(item_id, str) or not item_id]
        if bad:
            raise GalleryIndexError(f"ids must be non-empty strings, found {bad[:5]}")
        repeated = [item_id for item_id, count in Counter(ids).items() if count > 1]
        if repeated:
            raise DuplicateIdError(f"ids repeat within one add call, e.g. {repeated[:5]}; nothing was added")
        for item_id, meta in zip(ids, metadata, strict=True):
            try:
                json.dumps(meta)
            except (TypeError, ValueError) as exc:
                raise GalleryIndexError(f"metadata of {item_id!r} is not JSON-serialisable: {exc}") from exc

    def _exact(self, queries: np.ndarray, k: int, rows: np.ndarray | None) -> list[list[tuple[int, float]]]:
        """Brute-force top-k over all rows (or the given subset): per query [(row, score)], best first."""
        vectors = self._table.vectors if rows is None else self._table.vectors[rows]
        found = exact_top_k(queries, vectors, k)
        if rows is None:
            return found
        return [[(int(rows[pos]), score) for pos, score in hits] for hits in found]

    def _structure_search(
        self, queries: np.ndarray, k: int, mask: np.ndarray | None, matching: int
    ) -> list[list[tuple[int, float]]]:
        """Search the structure; with a mask, over-fetch and widen until k matching hits or everything was
        fetched, then fall back to exact search over the matching rows for queries still short."""
        n = len(self._table)
        refine = int(self._options.get("refine", 4)) if self.index_type == "ivfpq" else 1
        want = min(k, matching)
        fetch = min(n, k * refine if mask is None else max(2 * k, math.ceil(2 * k * n / matching)) * refine)
        results: list[list[tuple[int, float]] | None] = [None] * queries.shape[0]
        pending = np.arange(queries.shape[0])
        while pending.size:
            scores, labels = self._searcher.search(queries[pending], fetch)
            rows = self._table.rows_of_labels(labels)
            if refine > 1:
                safe = np.where(rows >= 0, rows, 0)
                scores = np.einsum("qd,qkd->qk", queries[pending], self._table.vectors[safe])
            short = []
            for i, qi in enumerate(pending):
                keep = rows[i] >= 0
                if mask is not None:
                    keep &= mask[np.where(keep, rows[i], 0)]
                cand = np.flatnonzero(keep)
                cand = cand[np.argsort(-scores[i, cand], kind="stable")][:want]
                hits = [(int(rows[i, c]), float(scores[i, c])) for c in cand]
                if mask is not None and len(hits) < want:
                    short.append(qi)
                results[qi] = hits
            if not short or fetch >= n:
                pending = np.asarray(short, dtype=np.int64)
                break
            pending, fetch = np.asarray(short, dtype=np.int64), min(n, fetch * 4)
        if pending.size and mask is not None:
            exact = self._exact(queries[pending], k, np.flatnonzero(mask))
            for qi, hits in zip(pending, exact, strict=True):
                results[int(qi)] = hits
        return [hits or [] for hits in results]

    def _to_hits(self, found: list[list[tuple[int, float]]]) -> list[list[Hit]]:
        ids, meta = self._table.ids, self._table.metadata
        return [[Hit(ids[row], score, dict(meta[row])) for row, score in hits] for hits in found]
