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

from cdd_common.json_document import read_json_object
from serving.index.errors import IndexBundleMismatch, IndexCorruptError
from serving.index.item_table import ItemTable

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
    for key in ("dim", "count", *faiss_only):
        value = info[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if key == "dim" else 0):
            raise IndexCorruptError(f"{path}: {key} is {value!r}, expected a non-negative integer; rebuild the index")
    return info


def read_rows(folder: Path, info: dict[str, Any]) -> tuple[list[str], np.ndarray, list[dict], np.ndarray]:
    """(ids, labels, metadata, vectors) of a version folder; IndexCorruptError naming the file (and line) of
    anything malformed."""
    count, dim = int(info["count"]), int(info["dim"])
    path = folder / "vectors.npy"
    try:
        vectors = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise IndexCorruptError(f"{path}: not a readable .npy array ({exc}); rebuild the index") from exc
    if vectors.shape != (count, dim) or vectors.dtype != np.float32:
        raise IndexCorruptError(
            f"{path}: {vectors.dtype} {vectors.shape}, index.json expects float32 ({count}, {dim}); rebuild the index"
        )
    ids, labels, metadata = [], [], []
    path = folder / "items.jsonl"
    with open(path, encoding="utf-8", errors="strict") as handle:
        try:
            for number, line in enumerate(handle, start=1):
                item_id, label, meta = _row(line, f"{path}:{number}")
                ids.append(item_id)
                labels.append(label)
                metadata.append(meta)
        except UnicodeDecodeError as exc:
            raise IndexCorruptError(f"{path}: not UTF-8 text ({exc}); rebuild the index") from exc
    if len(ids) != count:
        raise IndexCorruptError(f"{path}: {len(ids)} items, index.json expects {count}; rebuild the index")
    if len(set(ids)) != len(ids) or len(set(labels)) != len(labels):
        raise IndexCorruptError(f"{path}: ids or labels repeat; rebuild the index")
    if labels and "next_label" in info and max(labels) >= int(info["next_label"]):
        raise IndexCorruptError(
            f"{path}: label {max(labels)} is not below index.json's next_label {info['next_label']}; rebuild the index"
        )
    return ids, np.asarray(labels, dtype=np.int64).reshape(-1), metadata, vectors


def _row(line: str, where: str) -> tuple[str, int, dict[str, Any]]:
    """One items.jsonl row: {"id": non-empty str, "label": int >= 0, "metadata": object}."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise IndexCorruptError(f"{where}: not a JSON row ({exc.msg}); rebuild the index") from exc
    expected = 'expected {"id": non-empty string, "label": integer >= 0, "metadata": object}'
    if not isinstance(row, dict):
        raise IndexCorruptError(f"{where}: found {type(row).__name__}, {expected}; rebuild the index")
    item_id, label, meta = row.get("id"), row.get("label"), row.get("metadata")
    if not isinstance(item_id, str) or not item_id:
        raise IndexCorruptError(f"{where}: id is {item_id!r}, {expected}; rebuild the index")
    if isinstance(label, bool) or not isinstance(label, int) or label < 0:
        raise IndexCorruptError(f"{where}: label is {label!r}, {expected}; rebuild the index")
    if not isinstance(meta, dict):
        raise IndexCorruptError(f"{where}: metadata is {meta!r}, {expected}; rebuild the index")
    return item_id, label, meta


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
