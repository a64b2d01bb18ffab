"""`GalleryBackend`: the one interface the service searches and changes a gallery through, and
`open_gallery`, which opens the store an index folder's manifest names.

Stores: ``faiss`` (`DurableGallery`: FAISS in process, snapshot files + fsynced write log, the default)
and ``milvus`` (`MilvusGallery`: embedded milvus-lite under the index folder, or a Milvus server /
cluster by URI). The index manifest (``index.json`` of the live version) records the store, where its
data is (FAISS files, a milvus-lite path, or URI + collection), the bundle sha256, dim, metric, index
type and operating point; `open_gallery` refuses an index built with another bundle.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from serving.index.atomic_dir import publish, resolve, verify_checksums
from serving.index.collection_record import check_served, read_record
from serving.index.disk_format import FORMAT, FORMAT_VERSION, check_bundle, read_info
from serving.index.errors import GalleryIndexError
from serving.index.found_items import FoundItems
from serving.index.gallery import Hit

__all__ = ["STORES", "GalleryBackend", "open_gallery", "save_milvus_manifest"]

STORES = ("faiss", "milvus")
"""Where a gallery's items live: FAISS files in the index folder, or a Milvus collection."""


class GalleryBackend(Protocol):
    """A gallery of unit vectors with string ids and metadata. ``dim``, ``index_type``, ``store`` and
    ``bundle_sha256`` describe it; errors are `serving.index.errors` classes. Thread-safe."""

    store: str
    dim: int
    index_type: str
    bundle_sha256: str | None

    def __len__(self) -> int: ...

    def __contains__(self, item_id: object) -> bool: ...

    def search(
        self, queries: np.ndarray, k: int, filter: dict[str, Any] | None = None, *, columns: bool = False
    ) -> list[list[Hit]] | list[FoundItems]:
        """Top-``k`` hits per row of float32 (Q, dim) ``queries``, best first; ``filter`` {field: value}
        keeps items whose metadata text form equals each value (applied inside the search); ``columns``:
        one `FoundItems` per row instead of a list of `Hit` (what the gRPC Search handler replies from)."""

    def add(
        self, ids: Sequence[str], vectors: np.ndarray, metadata: Sequence[dict[str, Any]] | None = None, *,
        upsert: bool = False,
    ) -> int:
        """Add items (all or nothing; with ``upsert`` replace present ids); durable when it returns."""

    def remove(self, ids: Sequence[str]) -> int:
        """Remove items (all or nothing; UnknownIdError if one is absent); durable when it returns."""

    def persist(self) -> Any:
        """Fold pending changes into the store's compact form (FAISS: a new snapshot)."""

    def stats(self) -> dict[str, Any]:
        """JSON-serialisable facts: store, count, dim, metric, index_type, search parameters."""

    def close(self) -> None:
        """Persist and release the store."""


def open_gallery(
    directory: str | Path,
    expected_bundle_sha256: str | None = None,
    *,
    compatible: Collection[str] = (),
    device: str = "cpu",
    role: str = "server",
    snapshot_interval_s: float = 0.0,
    worker_lock: Any = None,
) -> GalleryBackend:
    """Open the gallery of index folder ``directory`` with the store its manifest names. ``role`` and
    ``snapshot_interval_s`` apply to the FAISS store (`DurableGallery.open`). Raises IndexBundleMismatch,
    IndexCorruptError, IndexInUse, GalleryIndexError (unknown store, Milvus unreachable). An index built
    with a bundle listed in ``compatible`` (the served manifest's ``compatible_with``) is accepted.
    ``worker_lock``: the `IndexLock` a `cdd-serve --workers` parent passed down; a FAISS store then opens as
    that worker's view (`DurableGallery.open_worker`), a Milvus store ignores it (the caller releases it)."""
    directory = Path(directory)
    folder = resolve(directory)
    info = read_info(folder)
    check_bundle(info, expected_bundle_sha256, directory, compatible)
    if expected_bundle_sha256 is not None:
        expected_bundle_sha256 = info.get("bundle_sha256")  # accepted above: the stores check their own stamp
    store = info.get("store", "faiss")
    if store == "faiss":
        from serving.index.durable_gallery import DurableGallery

        if worker_lock is not None:
            return DurableGallery.open_worker(directory, expected_bundle_sha256, device=device, lock=worker_lock)

        return DurableGallery.open(
            directory, expected_bundle_sha256, device=device, role=role, snapshot_interval_s=snapshot_interval_s
        )
    if store == "milvus":
        from serving.index.milvus_gallery import MilvusGallery

        verify_checksums(folder)  # the FAISS store's load verifies its own files
        where = info.get("milvus") or {}
        if "collection" not in where or not ("uri" in where or "path" in where):
            raise GalleryIndexError(
                f"{folder / 'index.json'}: store 'milvus' needs milvus.collection and milvus.uri or milvus.path, "
                f"found {where}; rebuild the index with cdd-index build --store milvus"
            )
        uri = where.get("uri") or str(directory / where["path"])
        gallery = MilvusGallery.connect(
            uri, where["collection"], int(info["dim"]), info["index_type"], info.get("options", {}),
            info.get("bundle_sha256"),
        )
        try:  # the collection's own build record must name the bundle index.json names
            check_served(read_record(gallery.client, gallery.collection), info.get("bundle_sha256"), gallery.collection)
        except BaseException:
            gallery.close()
            raise
        return gallery
    raise GalleryIndexError(
        f"{folder / 'index.json'}: store must be one of {STORES}, found {store!r}; rebuild the index"
    )


def save_milvus_manifest(
    directory: str | Path, gallery: Any, metric: str, created: str, saved: str, operating_point: dict | None = None
) -> Path:
    """Publish the manifest of a Milvus-backed index in ``directory`` (no vectors: they live in Milvus)."""
    directory = Path(directory)
    info = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "store": "milvus",
        "milvus": gallery.location(directory),
        "bundle_sha256": gallery.bundle_sha256,
        "dim": gallery.dim,
        "metric": metric,
        "index_type": gallery.index_type,
        "count": len(gallery),
        "options": dict(gallery.options),
        "created": created,
        "saved": saved,
        "operating_point": operating_point,
    }

    def write(folder: Path) -> None:
        import json

        (folder / "index.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")

    return publish(directory, write)
