"""The two stages of a Ray build, run by Ray Data on any node: `decode_rows` (Ray tasks) and
`EmbedWriter` (actors). Nothing here imports Ray: the driver (`serving.index.ray_build`) wires them.

Rows flow as numpy batches: ``id``, ``path``, ``metadata`` (JSON text) in; the decode stage adds
``pixels`` (uint8 (N, H, W, 3), zeros where not decoded), ``status`` and ``reason``; the actors embed the
rows whose status is "todo", upsert them into the collection and hand back only ``id``, ``path``,
``status`` ("embedded", "skipped": already in the collection, "failed") and ``reason``.
Writes are upserts keyed by the id, so a retried task or actor call and a re-run never duplicate a row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serving.bundle import Manifest, load_bundle
from serving.index.errors import IndexBundleMismatch
from serving.index.ray_inputs import read_model_input
from serving.preprocess import ImageDecodeError, ImageTooLargeError

__all__ = ["CollectionTarget", "EmbedWriter", "decode_rows"]

_GALLERIES: dict[tuple[str, str], Any] = {}


@dataclass(frozen=True)
class CollectionTarget:
    """The Milvus collection a build writes: server ``uri``, ``collection``, and how it is indexed."""

    uri: str
    collection: str
    dim: int
    index_type: str
    options: dict[str, Any]
    bundle_sha256: str

    def gallery(self) -> Any:
        """This process's connection to the collection (opened once per worker process)."""
        key = (self.uri, self.collection)
        if key not in _GALLERIES:
            from serving.index.milvus_gallery import MilvusGallery

            _GALLERIES[key] = MilvusGallery.connect(
                self.uri, self.collection, self.dim, self.index_type, self.options, self.bundle_sha256
            )
        return _GALLERIES[key]


def decode_rows(
    batch: dict[str, np.ndarray], manifest: Manifest, target: CollectionTarget, max_pixels: int
) -> dict[str, np.ndarray]:
    """Mark rows already in the collection "skipped" (one query per batch) and decode the others by the
    local build's rule: "todo" with pixels, or "failed" with the reason."""
    ids = [str(i) for i in batch["id"]]
    present = set(target.gallery().present(ids))
    pixels = np.zeros((len(ids), manifest.input.height, manifest.input.width, 3), dtype=np.uint8)
    status, reason = [], []
    for row, (item_id, location) in enumerate(zip(ids, batch["path"], strict=True)):
        if item_id in present:
            status.append("skipped")
            reason.append("")
            continue
        try:
            pixels[row] = read_model_input(str(location), manifest, max_pixels)
        except (ImageDecodeError, ImageTooLargeError) as exc:
            status.append("failed")
            reason.append(str(exc).removeprefix(f"{location}: "))
            continue
        status.append("todo")
        reason.append("")
    return {
        "id": np.asarray(ids, dtype=object),
        "path": batch["path"],
        "metadata": batch["metadata"],
        "pixels": pixels,
        "status": np.asarray(status, dtype=object),
        "reason": np.asarray(reason, dtype=object),
    }


class EmbedWriter:
    """An actor's stage: loads the bundle once (``threads`` engine threads), then per batch embeds the
    "todo" rows ``batch_size`` at a time and upserts them. Refuses (IndexBundleMismatch) a bundle folder
    whose manifest differs from the driver's (``bundle_sha256``): every node must hold the same bundle."""

    def __init__(
        self, bundle: str, backend: str, threads: int, batch_size: int, target: CollectionTarget
    ) -> None:
        from serving.backends import create_engine

        manifest = load_bundle(Path(bundle))
        if manifest.sha256() != target.bundle_sha256:
            raise IndexBundleMismatch(
                f"{bundle} on this node is bundle sha256 {manifest.sha256()}, the build started with "
                f"{target.bundle_sha256}; put the same bundle at that path on every node"
            )
        self.engine = create_engine(bundle, manifest, backend=backend, threads=threads)
        self.batch_size = batch_size
        self.target = target

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        status = np.asarray(batch["status"], dtype=object).copy()
        todo = np.flatnonzero(status == "todo")
        gallery = self.target.gallery()
        for start in range(0, todo.size, self.batch_size):
            rows = todo[start : start + self.batch_size]
            vectors = self.engine.embed(np.ascontiguousarray(batch["pixels"][rows]))
            ids = [str(batch["id"][r]) for r in rows]
            metadata = [json.loads(batch["metadata"][r]) for r in rows]
            gallery.add(ids, vectors, metadata, upsert=True)
            status[rows] = "embedded"
        return {"id": batch["id"], "path": batch["path"], "status": status, "reason": batch["reason"]}
