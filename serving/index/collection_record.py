"""The build record a Milvus collection carries in its properties (key ``cdd.build``): which bundle made
its vectors (sha256, name, dim, metric), by which decoding rule (rule name, JPEG draft, EXIF orientation,
alpha background, resize policy and interpolation, input size, pixel limit) and with which build
parameters (index type and options, id rule, engine). The record lives with the vectors, so a resumed
build refuses to mix bundles and a server refuses an index folder whose collection was rebuilt with
another bundle than its ``index.json`` names, wherever the index folder was copied.
"""

from __future__ import annotations

import json
from typing import Any

from serving.bundle import Manifest
from serving.index.errors import GalleryIndexError, IndexBundleMismatch

__all__ = ["PROPERTY", "build_record", "check_resumable", "check_served", "read_record", "write_record"]

PROPERTY = "cdd.build"
"""Name of the collection property holding the JSON build record."""
_MUST_MATCH = ("decoding", "index_type", "options", "id_rule")


def build_record(
    manifest: Manifest, *, index_type: str, options: dict[str, Any], engine: str, id_rule: str, max_pixels: int
) -> dict[str, Any]:
    """The record of a build of ``manifest``'s embeddings (JSON-serialisable)."""
    pre = manifest.preprocess
    return {
        "bundle_sha256": manifest.sha256(),
        "bundle_name": manifest.name,
        "dim": manifest.output.dim,
        "metric": manifest.metric,
        "decoding": {
            "rule": pre.decode,
            "jpeg_draft": pre.jpeg_draft,
            "exif_orientation": pre.exif_orientation,
            "background": list(pre.background),
            "policy": pre.policy,
            "interpolation": pre.interpolation,
            "input_hw": [manifest.input.height, manifest.input.width],
            "max_pixels": max_pixels,
        },
        "index_type": index_type,
        "options": dict(options),
        "id_rule": id_rule,
        "engine": engine,
    }


def write_record(client: Any, collection: str, record: dict[str, Any]) -> None:
    """Store ``record`` in the properties of ``collection`` (pymilvus ``MilvusClient``)."""
    client.alter_collection_properties(collection, properties={PROPERTY: json.dumps(record, sort_keys=True)})


def read_record(client: Any, collection: str) -> dict[str, Any] | None:
    """The record stored in ``collection``'s properties, or None when it has none."""
    text = (client.describe_collection(collection).get("properties") or {}).get(PROPERTY)
    if text is None:
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GalleryIndexError(
            f"Milvus collection {collection!r}: property {PROPERTY} is not JSON ({exc}); rebuild the collection "
            "with cdd-index build --restart"
        ) from None
    if not isinstance(record, dict) or "bundle_sha256" not in record:
        raise GalleryIndexError(
            f"Milvus collection {collection!r}: property {PROPERTY} has no bundle_sha256; rebuild the collection "
            "with cdd-index build --restart"
        )
    return record


def check_resumable(found: dict[str, Any] | None, wanted: dict[str, Any], collection: str) -> None:
    """Refuse to add to ``collection`` (recorded ``found``) a build described by ``wanted``: another bundle
    (IndexBundleMismatch), another decoding rule, index or id rule, or no record (GalleryIndexError)."""
    restart = (f"rebuild it from scratch with --restart (drops the collection), or build into another "
               f"--collection than {collection!r}")
    if found is None:
        raise GalleryIndexError(
            f"Milvus collection {collection!r} exists but has no build record ({PROPERTY}), so its vectors may "
            f"come from any bundle; {restart}"
        )
    if found["bundle_sha256"] != wanted["bundle_sha256"]:
        raise IndexBundleMismatch(
            f"Milvus collection {collection!r} holds embeddings of bundle sha256 {found['bundle_sha256']} "
            f"({found.get('bundle_name')}), this build's bundle is {wanted['bundle_sha256']} "
            f"({wanted['bundle_name']}); embeddings of different models cannot be mixed; {restart}"
        )
    for key in _MUST_MATCH:
        if found.get(key) != wanted[key]:
            raise GalleryIndexError(
                f"Milvus collection {collection!r} was built with {key} {found.get(key)!r}, this build asks for "
                f"{wanted[key]!r}; resume with the same settings, or {restart}"
            )


def check_served(found: dict[str, Any] | None, index_bundle_sha256: str | None, collection: str) -> None:
    """Refuse (IndexBundleMismatch) a collection whose record names another bundle than the index folder's
    manifest (the collection was rebuilt after the folder was written); no record is accepted."""
    if found is not None and index_bundle_sha256 is not None and found["bundle_sha256"] != index_bundle_sha256:
        raise IndexBundleMismatch(
            f"Milvus collection {collection!r} now holds embeddings of bundle sha256 {found['bundle_sha256']} "
            f"({found.get('bundle_name')}), but the index folder's index.json says {index_bundle_sha256}: the "
            "collection was rebuilt since; rebuild the index folder against it (cdd-index build --store milvus) "
            "or serve the bundle the collection was built with"
        )
