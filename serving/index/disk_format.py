"""The files of one saved gallery-index version (inside a folder managed by `serving.index.atomic_dir`)::

index.json      {format, format_version, store ("faiss"; "milvus" indexes hold only this file, with
                 milvus {path | uri, collection}), bundle_sha256, dim, metric, index_type, count, next_label,
                 created, saved, options (as given, plus the operating point nprobe / ef_search), search
                 (parameters chosen when trained), trained, tombstones (removed hnsw labels still in the graph)}
items.jsonl     one {"id", "label", "metadata"} per row, in the row order of vectors.npy
vectors.npy     float32 (count, dim)
structure.faiss the serialised FAISS index (ivf / ivfpq / hnsw; flat is rebuilt from vectors.npy)
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

from serving.index.errors import IndexBundleMismatch, IndexCorruptError
from serving.index.item_table import ItemTable
from serving.json_document import read_json_object

__all__ = ["FORMAT", "FORMAT_VERSION", "STRUCTURE_FILE", "check_bundle", "read_info", "read_rows", "write_files"]

FORMAT = "cdd-gallery-index"
FORMAT_VERSION = 1
STRUCTURE_FILE = "structure.faiss"


def write_files(folder: Path, info: dict[str, Any], table: ItemTable, structure: bytes | None) -> None:
    """Write index.json, vectors.npy, items.jsonl (and structure.faiss) into ``folder``."""
    (folder / "index.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    with open(folder / "vectors.npy", "wb") as handle:
        np.save(handle, table.vectors)
    with open(folder / "items.jsonl", "w") as handle:
        for item_id, label, meta in zip(table.ids, table.labels.tolist(), table.metadata, strict=True):
            handle.write(json.dumps({"id": item_id, "label": label, "metadata": meta}, sort_keys=True) + "\n")
    if structure is not None:
        (folder / STRUCTURE_FILE).write_bytes(structure)


def read_info(folder: Path) -> dict[str, Any]:
    path = folder / "index.json"
    info = read_json_object(path, IndexCorruptError, "the index manifest", "rebuild the index")
    if info.get("format") != FORMAT or info.get("format_version") != FORMAT_VERSION:
        raise IndexCorruptError(
            f"{path}: format {info.get('format')!r} version {info.get('format_version')!r}, this build reads "
            f"{FORMAT!r} version {FORMAT_VERSION}; rebuild the index with this version of cdd-index"
        )
    faiss_only = ("next_label",) if info.get("store", "faiss") == "faiss" else ()
    needed = ("dim", "metric", "index_type", "count", *faiss_only)
    missing = [key for key in needed if key not in info]
    if missing:
        raise IndexCorruptError(f"{path}: missing field(s) {missing}; rebuild the index")
    return info


def read_rows(folder: Path, info: dict[str, Any]) -> tuple[list[str], np.ndarray, list[dict], np.ndarray]:
    count, dim = int(info["count"]), int(info["dim"])
    vectors = np.load(folder / "vectors.npy", allow_pickle=False)
    if vectors.shape != (count, dim) or vectors.dtype != np.float32:
        raise IndexCorruptError(
            f"{folder / 'vectors.npy'}: {vectors.dtype} {vectors.shape}, index.json expects float32 "
            f"({count}, {dim}); rebuild the index"
        )
    ids, labels, metadata = [], [], []
    with open(folder / "items.jsonl") as handle:
        for line in handle:
            row = json.loads(line)
            ids.append(row["id"])
            labels.append(row["label"])
            metadata.append(row["metadata"])
    if len(ids) != count:
        raise IndexCorruptError(
            f"{folder / 'items.jsonl'}: {len(ids)} items, index.json expects {count}; rebuild the index"
        )
    return ids, np.asarray(labels, dtype=np.int64).reshape(-1), metadata, vectors



def check_bundle(info: dict[str, Any], expected_bundle_sha256: str | None, directory: str | Path,
                 compatible: Collection[str] = ()) -> None:
    """Refuse (IndexBundleMismatch) an index whose manifest names another bundle than the one served, unless
    that bundle's sha256 is in ``compatible`` (the served manifest's ``compatible_with``)."""
    built_with = info.get("bundle_sha256")
    if expected_bundle_sha256 is not None and built_with != expected_bundle_sha256 and built_with not in compatible:
        raise IndexBundleMismatch(
            f"index {directory} was built with bundle sha256 {built_with}, but the bundle being served has "
            f"sha256 {expected_bundle_sha256} and does not list it in its manifest's compatible_with; "
            "embeddings of different models (or precisions) cannot be compared; rebuild it: cdd-index build "
            f"--bundle BUNDLE --images IMAGES --out {directory}"
        )
