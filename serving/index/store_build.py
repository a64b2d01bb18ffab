"""``cdd-index build`` per store: embed the items into a FAISS `GalleryIndex` or a Milvus collection,
tune the operating point of an approximate index (`serving.index.operating_point`), publish the index
manifest. The output folder is held with the writer lock (`IndexLock`) throughout, so a running server
or another writer on it is noticed.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from serving.backends.base import Engine
from serving.bundle import Manifest
from serving.config import ServeConfig
from serving.index.build import ID_RULE, IngestStats, ItemSpec, build_index, ingest
from serving.index.index_lock import IndexLock
from serving.index.operating_point import PARAMETER, exact_neighbours, tune_operating_point

__all__ = ["BuildResult", "build_store", "tune_store"]

_LOG = logging.getLogger("cdd-index")
_TUNE_QUERIES = 200


@dataclass(frozen=True)
class BuildResult:
    """What a build wrote: the live version folder, item count, ingest stats, the operating point."""

    version: Path
    count: int
    stats: IngestStats
    operating_point: dict[str, Any] | None


class _Recorder:
    """Passes adds to a gallery and keeps the ids and vectors (for the exact ground truth when tuning)."""

    def __init__(self, gallery: Any) -> None:
        self.gallery = gallery
        self.bundle_sha256 = gallery.bundle_sha256
        self.ids: list[str] = []
        self.vectors: list[np.ndarray] = []

    def __contains__(self, item_id: object) -> bool:
        return item_id in self.gallery

    def add(self, ids: Sequence[str], vectors: np.ndarray, metadata: Sequence[dict[str, Any]]) -> int:
        self.gallery.add(ids, vectors, metadata)
        self.ids.extend(ids)
        self.vectors.append(np.asarray(vectors, dtype=np.float32))
        return len(ids)


def tune_store(gallery: Any, index_type: str, ids: list[str], vectors: np.ndarray, upper: int | None) -> dict | None:
    """Set ``gallery``'s operating point for an approximate ``index_type`` (recall@10 against exact search
    over ``vectors``, on up to 200 of them as queries); its facts, or None (exact type, or <= 10 items)."""
    knob = PARAMETER.get(index_type) or (gallery.search_knob() if index_type == "factory" else None)
    if knob is None or len(ids) <= 10:
        return None
    picks = np.random.default_rng(0).permutation(len(ids))[:_TUNE_QUERIES]
    truth = exact_neighbours(vectors[picks], vectors, ids, 10)
    point = tune_operating_point(
        index_type, gallery.search, gallery.set_operating_point, vectors[picks], truth, upper=upper, parameter=knob
    )
    if not point.reached:
        _LOG.warning(
            "%s never reached recall@10 %.2f; using %s=%d (recall@10 %.3f)",
            index_type, point.to_dict()["target"], point.parameter, point.value, point.recall,
        )
    return point.to_dict()


def build_store(
    engine: Engine,
    manifest: Manifest,
    items: list[ItemSpec],
    out: Path,
    *,
    store: str = "faiss",
    index_type: str = "flat",
    device: str = "cpu",
    options: dict[str, Any] | None = None,
    milvus_uri: str | None = None,
    collection: str = "cdd_gallery",
    **ingest_args: Any,
) -> BuildResult:
    """Build the index of ``items`` into ``out`` in ``store`` ("faiss" or "milvus"); ``milvus_uri`` None
    = embedded milvus-lite under ``out``. ``ingest_args`` go to `ingest` (batch_size, workers, strict,
    progress). Raises IndexInUse when a server has ``out`` open, GalleryIndexError, IngestError."""
    fresh = not out.exists()
    lock = IndexLock(out, "writer")
    try:
        if store == "faiss":
            index, stats = build_index(
                engine, manifest, items, index_type=index_type, device=device, options=options, **ingest_args
            )
            index.settle()  # trains ivf / ivfpq before tuning
            ids, vectors, _ = index.snapshot()
            nlist = index.stats()["search"].get("nlist")
            point = tune_store(index, index_type, ids, vectors, nlist)
            version = index.save(out, extra={"operating_point": point}) if point else index.save(out)
            return BuildResult(version, len(index), stats, point)
        return _build_milvus(engine, manifest, items, out, index_type, options or {}, milvus_uri, collection,
                             ingest_args)
    except BaseException:
        if fresh:  # nothing was published: leave no folder behind
            lock.release()
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        lock.release()


def _build_milvus(
    engine: Engine, manifest: Manifest, items: list[ItemSpec], out: Path, index_type: str, options: dict[str, Any],
    milvus_uri: str | None, collection: str, ingest_args: dict[str, Any],
) -> BuildResult:
    from serving.index.collection_record import build_record, write_record
    from serving.index.gallery_backend import save_milvus_manifest
    from serving.index.milvus_gallery import EMBEDDED_DB, MilvusGallery

    created = datetime.now(UTC).isoformat(timespec="seconds")
    uri = milvus_uri or str(out / EMBEDDED_DB)
    gallery = MilvusGallery.create(
        uri, collection, manifest.output.dim, index_type=index_type, options=options, bundle_sha256=manifest.sha256()
    )
    try:
        record = build_record(manifest, index_type=index_type, options=options, engine="local",
                              id_rule=ID_RULE, max_pixels=ingest_args.get("max_pixels", ServeConfig.max_pixels))
        write_record(gallery.client, collection, record)
        recorder = _Recorder(gallery)
        stats = ingest(recorder, engine, manifest, items, **ingest_args)
        vectors = np.concatenate(recorder.vectors) if recorder.vectors else np.zeros((0, manifest.output.dim))
        point = tune_store(gallery, index_type, recorder.ids, vectors, options.get("nlist", 128))
        gallery.persist()
        saved = datetime.now(UTC).isoformat(timespec="seconds")
        version = save_milvus_manifest(out, gallery, manifest.metric, created, saved, point)
        return BuildResult(version, len(gallery), stats, point)
    finally:
        gallery.close()
