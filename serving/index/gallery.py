"""`GalleryIndex`: unit-norm embeddings with string ids and metadata, searchable, saved atomically.

The index keeps every vector in an `ItemTable` (the source of truth: saving, filters, exact re-ranking,
rebuilding) and a search structure built from it: FAISS (flat / ivf / ivfpq / hnsw, on a GPU when faiss
has GPU support) or, for "flat" on a GPU without faiss GPU support, torch. Scores are inner products of
unit vectors (cosine similarity), higher is closer. A read-write lock lets searches run side by side
while add / remove / swap take it alone. IVF training (once there are enough items, or after large
growth) and HNSW rebuilds (once removals leave many tombstones) run in a background thread on a copy of
the rows and are swapped in with the changes made meanwhile; a request never waits for one. Metadata
filters go to the structure as a FAISS ID selector built from the item table's inverted index.

This is the in-memory FAISS gallery; `serving.index.durable_gallery.DurableGallery` adds the fsynced
write log that makes an acknowledged change survive a crash.

Saved with `save` as a versioned folder (`serving.index.atomic_dir`: crash-safe, checksummed) holding
the files described in `serving.index.disk_format`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from serving.index.atomic_dir import publish, resolve, verify_checksums
from serving.index.disk_format import (
    FORMAT,
    FORMAT_VERSION,
    STRUCTURE_FILE,
    check_bundle,
    read_info,
    read_rows,
    write_files,
)
from serving.index.errors import (
    DimensionError,
    DuplicateIdError,
    GalleryIndexError,
    IndexCorruptError,
    UnknownIdError,
)
from serving.index.found_items import FoundItems, Hit
from serving.index.item_table import ItemTable
from serving.index.rw_lock import ReadWriteLock
from serving.index.searcher import DEVICES, Searcher, new_searcher, resolve_engine
from serving.index.table_search import Ranked, exact_rows, structure_search
from serving.index.vector_checks import check_items, check_k, check_queries, check_vectors

__all__ = ["DEVICES", "INDEX_TYPES", "OPTION_KEYS", "GalleryIndex", "Hit"]

INDEX_TYPES = ("flat", "ivf", "ivfpq", "hnsw", "factory")
"""Index types: exact inner product, then the approximate ones for large galleries; "factory": any FAISS
index factory string in ``options["factory"]`` (`serving.index.faiss_factory`)."""
OPTION_KEYS = frozenset(
    {"nlist", "nprobe", "pq_m", "pq_nbits", "refine", "hnsw_m", "ef_search", "ef_construction", "seed", "gpu",
     "factory"}
)
"""Tuning options: ivf/ivfpq ``nlist``, ``nprobe``; ivfpq ``pq_m``, ``pq_nbits``, ``refine`` (candidates per
result re-ranked with exact vectors, default 4); hnsw ``hnsw_m``, ``ef_search``, ``ef_construction``;
k-means ``seed``; ``gpu`` ordinal."""
_MIN_TRAIN = 256
_RETRAIN_GROWTH = 8
_LOG = logging.getLogger("serving.index")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class GalleryIndex:
    """Searchable gallery of float32 unit-norm vectors of dimension ``dim`` with string ids and metadata.

    ``index_type`` is one of INDEX_TYPES; ``device`` one of DEVICES ("auto" = GPU when usable);
    ``options`` keys are OPTION_KEYS; ``bundle_sha256`` is the `Manifest.sha256()` of the bundle whose
    engine produced the vectors. Raises GalleryIndexError subclasses (see `serving.index.errors`)."""

    store = "faiss"

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
        _check_factory_option(index_type, options or {}, dim)
        self.dim = dim
        self.index_type = index_type
        self.metric = metric
        self.bundle_sha256 = bundle_sha256
        self.created = created or _now()
        self.engine = resolve_engine(device, index_type)
        self._options = dict(options or {})
        self._lock = ReadWriteLock()
        self._table = ItemTable(dim)
        self._searcher: Searcher = self._new_searcher()
        self._trained_on = 0
        self._maintenance: threading.Thread | None = None
        self._maintenance_guard = threading.Lock()

    # ------------------------------------------------------------------ content
    def __len__(self) -> int:
        with self._lock.read():
            return len(self._table)

    def __contains__(self, item_id: object) -> bool:
        with self._lock.read():
            return item_id in self._table

    def check_add(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        metadata: Sequence[dict[str, Any]] | None = None,
        *,
        upsert: bool = False,
    ) -> tuple[list[str], np.ndarray, list[dict[str, Any]]]:
        """Validate an `add` without applying it: (ids, float32 vectors, metadata copies). Raises
        DuplicateIdError (an id present, unless ``upsert``, or repeated), DimensionError, InvalidVectorsError."""
        ids = list(ids)
        metadata = [{} for _ in ids] if metadata is None else [dict(m) for m in metadata]
        array = check_vectors(vectors, len(ids), self.dim)
        check_items(ids, metadata)
        if not upsert:
            with self._lock.read():
                existing = [item_id for item_id in ids if item_id in self._table]
            if existing:
                raise DuplicateIdError(
                    f"{len(existing)} id(s) already in the index, e.g. {existing[:5]}; remove them first, "
                    "use other ids, or add with upsert to replace them; nothing was added"
                )
        return ids, array, metadata

    def add(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        metadata: Sequence[dict[str, Any]] | None = None,
        *,
        upsert: bool = False,
    ) -> int:
        """Add items: ``ids`` (unique non-empty strings), ``vectors`` float32 (N, dim) unit-norm rows,
        ``metadata`` JSON-serialisable dicts (default empty); with ``upsert`` an id already present is
        replaced instead of refused (a retried add is harmless). All or nothing; returns N.

        Raises DuplicateIdError, DimensionError, InvalidVectorsError."""
        ids, array, metadata = self.check_add(ids, vectors, metadata, upsert=upsert)
        with self._lock.write():
            present = [item_id for item_id in ids if item_id in self._table]
            if present and not upsert:
                raise DuplicateIdError(f"id(s) {present[:5]} were added meanwhile; nothing was added")
            if present:
                self._remove_rows(present)
            labels = self._table.append(ids, array, metadata)
            if self._searcher.is_trained:
                self._searcher.add(array, labels)
        self._maybe_maintain()
        return len(ids)

    def check_remove(self, ids: Sequence[str]) -> list[str]:
        """The distinct ids of a `remove`, validated without removing; UnknownIdError if any is absent."""
        unique = list(dict.fromkeys(ids))
        with self._lock.read():
            unknown = [item_id for item_id in unique if item_id not in self._table]
        if unknown:
            raise UnknownIdError(f"{len(unknown)} id(s) not in the index, e.g. {unknown[:5]}; nothing was removed")
        return unique

    def remove(self, ids: Sequence[str]) -> int:
        """Remove items by id; returns how many. Raises UnknownIdError (nothing removed) if any is absent."""
        unique = self.check_remove(ids)
        with self._lock.write():
            unknown = [item_id for item_id in unique if item_id not in self._table]
            if unknown:
                raise UnknownIdError(f"id(s) {unknown[:5]} were removed meanwhile; nothing was removed")
            self._remove_rows(unique)
        self._maybe_maintain()
        return len(unique)

    def get(self, item_id: str) -> tuple[np.ndarray, dict[str, Any]]:
        """(vector copy (dim,), metadata copy) of one item; UnknownIdError if absent."""
        with self._lock.read():
            if item_id not in self._table:
                raise UnknownIdError(f"id {item_id!r} is not in the index")
            row = self._table.row_of_id(item_id)
            return self._table.vectors[row].copy(), dict(self._table.metadata[row])

    def snapshot(self) -> tuple[list[str], np.ndarray, list[dict[str, Any]]]:
        """Consistent copies of (ids, vectors (N, dim), metadata) in row order."""
        with self._lock.read():
            meta = [dict(m) for m in self._table.metadata]
            return list(self._table.ids), self._table.vectors.copy(), meta

    # ------------------------------------------------------------------ search
    def search(
        self, queries: np.ndarray, k: int, filter: dict[str, Any] | None = None, *, exact: bool = False,
        columns: bool = False,
    ) -> list[list[Hit]] | list[FoundItems]:
        """Top-``k`` hits per query row, best first, from ONE structure search for all rows. ``queries``
        float32 (Q, dim); ``filter`` keeps only items whose ``metadata[field]`` has the text form
        (`metadata_text`) of ``value`` for every given field, so {"camera": 3} and {"camera": "3"} match
        camera 3 (a missing field never matches); applied inside the search (a FAISS ID selector), so each
        list holds min(k, matching items) hits; ``exact`` forces brute force over all vectors. Approximate
        types may return fewer than k hits without a filter. With ``columns`` each query's hits come as
        one `FoundItems` (captured under the read lock; its `reply` gives the response bytes without a
        `Hit` per item) instead of a list of `Hit`.
        Raises DimensionError, InvalidVectorsError, GalleryIndexError (k < 1)."""
        found = self._search_found(queries, k, filter, exact)
        return found if columns else [items.hits() for items in found]

    def _search_found(
        self, queries: np.ndarray, k: int, filter: dict[str, Any] | None, exact: bool
    ) -> list[FoundItems]:
        array = check_queries(queries, self.dim)
        k = check_k(k)
        with self._lock.read():
            n = len(self._table)
            allowed = self._table.match_labels(filter) if filter else None
            matching = n if allowed is None else int(allowed.size)
            if matching == 0:
                return [_NOTHING for _ in range(array.shape[0])]
            in_structure = getattr(self._searcher, "filters_in_structure", True)
            few = allowed is not None and (matching * 8 < n or not in_structure)
            if exact or not self._searcher.is_trained or few:
                rows = None if allowed is None else self._table.rows_of_labels(allowed)
                return self._found(exact_rows(self._table, array, k, rows))
            refine = int(self._options.get("refine", 4)) if self._lossy_codes() else 1
            return self._found(structure_search(self._table, self._searcher, array, k, allowed, refine))

    # ------------------------------------------------------------------ maintenance
    def rebuild(self) -> None:
        """Rebuild the search structure from the stored vectors now, in this thread (retrains ivf / ivfpq,
        drops hnsw tombstones); searches keep running on the old structure until the swap."""
        self.wait_for_maintenance()
        self._rebuild_and_swap()

    def wait_for_maintenance(self, timeout: float | None = None) -> bool:
        """Wait for a background rebuild to finish; returns False if one is still running at ``timeout``."""
        thread = self._maintenance
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def settle(self) -> None:
        """Wait for a background rebuild, then run one that is due (training, growth, tombstones) here."""
        self.wait_for_maintenance()
        if self._needs_maintenance():
            self._rebuild_and_swap()

    def set_operating_point(self, name: str, value: int) -> None:
        """Set ``nprobe`` (ivf / ivfpq) or ``ef_search`` (hnsw), kept in the options and saved with the index."""
        if name not in ("nprobe", "ef_search"):
            raise GalleryIndexError(f"operating point must be nprobe or ef_search, found {name!r}")
        with self._lock.write():
            self._options[name] = int(value)
            if self._searcher.is_trained:
                self._searcher.set_search_param(name, int(value))

    def close(self) -> None:
        """Let a running background rebuild finish (the index stays usable)."""
        self.wait_for_maintenance()

    def stats(self) -> dict[str, Any]:
        """JSON-serialisable summary: count, dim, metric, index_type, bundle_sha256, created, trained,
        search engine facts (faiss version, nlist/nprobe..., tombstones), options."""
        with self._lock.read():
            search = (
                self._searcher.describe() if self._searcher.is_trained else {"engine": "exact (untrained)"}
            )
            return {
                "store": self.store,
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
    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write the index into ``directory`` atomically (the previous content stays valid until the new one
        is complete); returns the version folder. Trains ivf / ivfpq first when it has enough items.
        ``extra`` entries are added to index.json."""
        self.settle()
        with self._lock.read():
            structure = None
            if self.index_type != "flat" and self._searcher.is_trained:
                structure = self._searcher.serialize()
            info = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "store": self.store,
                "bundle_sha256": self.bundle_sha256,
                "dim": self.dim,
                "metric": self.metric,
                "index_type": self.index_type,
                "count": len(self._table),
                "next_label": self._table.next_label,
                "created": self.created,
                "saved": _now(),
                "trained": structure is not None,
                "tombstones": self._searcher.tombstones if structure is not None else [],
                "options": dict(self._options),
                "search": self._searcher.describe() if self._searcher.is_trained else {},
                **(extra or {}),
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
        check_bundle(info, expected_bundle_sha256, directory, compatible)
        if info.get("store", "faiss") != "faiss":
            raise GalleryIndexError(
                f"index {directory} keeps its items in {info['store']!r}, not in FAISS files; open it with "
                "serving.index.gallery_backend.open_gallery (cdd-serve does)"
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
        index._restore_searcher(folder, info.get("tombstones", []))
        return index

    # ------------------------------------------------------------------ internals
    def _restore_searcher(self, folder: Path, tombstones: list[int]) -> None:
        """Search structure of a loaded version: the serialised FAISS index, else rebuilt from the table."""
        structure = folder / STRUCTURE_FILE
        n = len(self._table)
        if not structure.is_file() or self.engine == "torch-cuda":
            if self._searcher.is_trained and n:
                self._searcher.add(self._table.vectors, self._table.labels)
            elif n:
                self._searcher = self._built_searcher(self._table.vectors, self._table.labels)
            return
        from serving.index.faiss_searcher import FaissSearcher

        use_gpu = self.engine == "faiss-gpu"
        data = structure.read_bytes()
        self._searcher = FaissSearcher.deserialize(
            data, self.index_type, self.dim, self._options, use_gpu, tombstones
        )
        self._trained_on = n
        if self._searcher.ntotal != n:
            raise IndexCorruptError(
                f"{structure} holds {self._searcher.ntotal} vectors but {folder} lists {n} items; "
                "rebuild the index with `cdd-index build`"
            )

    def _new_searcher(self) -> Searcher:
        return new_searcher(self.engine, self.index_type, self.dim, self._options)

    def _remove_rows(self, ids: list[str]) -> None:
        labels = self._table.remove(ids)
        if self._searcher.is_trained and labels.size:
            self._searcher.remove(labels)

    def _needs_maintenance(self) -> bool:
        """ivf / ivfpq: untrained with _MIN_TRAIN items, or grown _RETRAIN_GROWTH-fold since training;
        hnsw: many tombstones."""
        with self._lock.read():
            n = len(self._table)
            if self.index_type in ("ivf", "ivfpq") or getattr(self._searcher, "needs_training", False):
                if not self._searcher.is_trained:
                    return n >= _MIN_TRAIN
                return self._trained_on > 0 and n > _RETRAIN_GROWTH * self._trained_on
            return bool(self._searcher.needs_rebuild)

    def _maybe_maintain(self) -> None:
        """Start a background rebuild when `_needs_maintenance` (at most one at a time)."""
        if not self._needs_maintenance():
            return
        with self._maintenance_guard:
            if self._maintenance is not None and self._maintenance.is_alive():
                return
            self._maintenance = threading.Thread(
                target=self._background_rebuild, name="cdd-index-rebuild", daemon=True
            )
            self._maintenance.start()

    def _background_rebuild(self) -> None:
        try:
            self._rebuild_and_swap()
        except Exception:  # logged: the old structure keeps serving
            _LOG.exception("background rebuild of the %s index failed; the previous structure stays", self.index_type)

    def _built_searcher(self, vectors: np.ndarray, labels: np.ndarray) -> Searcher:
        """A fresh structure holding ``vectors`` under ``labels`` (trained on them when the type needs it)."""
        searcher = self._new_searcher()
        if labels.size == 0:
            return searcher
        if not searcher.is_trained:
            searcher.train(vectors)
        searcher.add(vectors, labels)
        return searcher

    def _rebuild_and_swap(self) -> None:
        """Build a new structure from a copy of the rows without holding the write lock, then, under it,
        apply the adds / removes made meanwhile and swap it in."""
        with self._lock.read():
            vectors, labels = self._table.vectors.copy(), self._table.labels.copy()
        searcher = self._built_searcher(vectors, labels)
        with self._lock.write():
            now = self._table.labels
            added = ~np.isin(now, labels)
            gone = labels[~np.isin(labels, now)]
            if searcher.is_trained:
                if added.any():
                    searcher.add(self._table.vectors[added], now[added])
                if gone.size:
                    searcher.remove(gone)
                for name in ("nprobe", "ef_search"):
                    if name in self._options:
                        try:
                            searcher.set_search_param(name, int(self._options[name]))
                        except ValueError:
                            pass
            self._searcher = searcher
            self._trained_on = int(labels.size) if searcher.is_trained else 0

    def _lossy_codes(self) -> bool:
        if self.index_type == "factory":
            from serving.index.faiss_factory import lossy

            return lossy(str(self._options["factory"]))
        return self.index_type == "ivfpq"

    def search_knob(self) -> str | None:
        """The operating-point parameter of the current structure ("nprobe", "ef_search") or None."""
        with self._lock.read():
            return getattr(self._searcher, "search_knob", None)

    def _found(self, ranked: list[Ranked]) -> list[FoundItems]:
        """Each query's columns, taken from the table now (the caller holds the read lock)."""
        ids, meta, wire, heads = self._table.ids, self._table.metadata, self._table.wire, self._table.heads
        found = []
        for rows, scores in ranked:
            at = rows.tolist()
            found.append(FoundItems(list(map(ids.__getitem__, at)), scores, list(map(meta.__getitem__, at)),
                                    list(map(wire.__getitem__, at)), list(map(heads.__getitem__, at))))
        return found


_NOTHING = FoundItems((), np.zeros(0, dtype=np.float32), (), (), ())


def _check_factory_option(index_type: str, options: dict[str, Any], dim: int) -> None:
    """A factory index needs ``options["factory"]`` that FAISS accepts; the named types take none."""
    if index_type != "factory":
        if "factory" in options:
            raise GalleryIndexError(f"option 'factory' goes with index_type 'factory', found index_type {index_type!r}")
        return
    from serving.index.faiss_factory import FactoryError, check_factory

    try:
        check_factory(options.get("factory"), dim)
    except FactoryError as exc:
        raise GalleryIndexError(str(exc)) from None
