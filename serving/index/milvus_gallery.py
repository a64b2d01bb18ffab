"""`MilvusGallery`: the gallery backend on Milvus through pymilvus' `MilvusClient`.

Either embedded milvus-lite at a local path (``<index dir>/milvus.db``: one machine, tests) or a Milvus
server / cluster by URI (``http://host:19530``; a token from ``$CDD_MILVUS_TOKEN``), shared by any number
of stateless `cdd-serve` replicas. Durability is Milvus' own: an insert / upsert / delete it acknowledged
is in its write-ahead log (milvus-lite: on disk) before the call returns.

One collection per index: ``id`` VARCHAR primary key, ``vector`` FLOAT_VECTOR(dim) with an inner-product
index (flat -> FLAT, ivf -> IVF_FLAT, hnsw -> HNSW), ``metadata`` JSON (values as given) and ``attrs``
JSON (every value's `metadata_text`, what filters compare). Filters become Milvus boolean expressions
(``attrs["camera"] == "3" and ...``), evaluated inside Milvus; every id, key and value in an expression is a
`milvus_string` literal, so any Unicode text (quotes, backslashes, newlines, control characters, RTL marks)
matches exactly itself. (milvus-lite does not take pymilvus' ``filter_params`` templates, and pymilvus'
``delete(ids=...)`` quotes ids naively, so deletes go through the same expression.) Adds are written with upsert after a
duplicate check, so two replicas adding the same id never leave two rows.
pymilvus is optional (``pip install -e '.[milvus]'``) and imported only here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from serving.index.errors import DuplicateIdError, GalleryIndexError, UnknownIdError
from serving.index.found_items import FoundItems
from serving.index.gallery import Hit
from serving.index.item_table import metadata_text
from serving.index.vector_checks import check_items, check_k, check_queries, check_vectors

__all__ = ["EMBEDDED_DB", "MILVUS_INDEX", "TOKEN_ENV", "MilvusGallery", "filter_expression", "milvus_string"]

EMBEDDED_DB = "milvus.db"
"""File name of the embedded milvus-lite database inside an index folder."""
TOKEN_ENV = "CDD_MILVUS_TOKEN"
"""Environment variable holding the Milvus token ("user:password" or an API key); never stored in files."""
MILVUS_INDEX = {"flat": "FLAT", "ivf": "IVF_FLAT", "hnsw": "HNSW"}
"""Our index types -> Milvus index types (ivfpq has no milvus-lite implementation)."""
_MAX_ID = 1024
# pymilvus pings every 10 s even on an idle connection (and pools connections per address in a process);
# a gRPC server with the default ping policy (milvus-lite server) answers an idle connection's pings with
# GOAWAY "too_many_pings", after which pymilvus fails to reconnect. Ping no more than gRPC servers allow.
_GRPC_OPTIONS = {"grpc.keepalive_time_ms": 300_000}
_BATCH = 1000
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r"}


def _client(uri: str) -> Any:
    try:
        from pymilvus import MilvusClient
    except ImportError as exc:
        raise GalleryIndexError(
            f"the Milvus store needs pymilvus and milvus-lite ({exc}); install them: pip install -e '.[milvus]'"
        ) from exc
    token = os.environ.get(TOKEN_ENV, "")
    try:
        if token:
            return MilvusClient(uri, token=token, grpc_options=_GRPC_OPTIONS)
        return MilvusClient(uri, grpc_options=_GRPC_OPTIONS)
    except Exception as exc:  # pymilvus raises MilvusException / ConnectionError subclasses
        if _is_embedded(uri):
            raise GalleryIndexError(
                f"cannot open the embedded Milvus database {uri}: {exc}; milvus-lite lets one process open it, "
                "so if a cdd-serve has it open, change the gallery through that server (AddItems / RemoveItems), "
                "or serve it with `milvus-lite server` and rebuild with --milvus-uri to share it"
            ) from exc
        raise GalleryIndexError(f"cannot connect to Milvus at {uri}: {exc}; is it running and reachable?") from exc


def milvus_string(value: str) -> str:
    """A double-quoted Milvus expression literal of any Unicode ``value``: backslash, double quote, newline
    and carriage return escaped with a backslash, every other character as it is (the Milvus lexer takes
    them raw and knows no backslash-u escapes)."""
    return '"' + "".join(_ESCAPES.get(char, char) for char in value) + '"'


def filter_expression(filter: dict[str, Any]) -> str:
    """A Milvus boolean expression matching ``filter`` on the ``attrs`` text forms (keys and values as
    `milvus_string` literals): {"camera": 3} -> ``attrs["camera"] == "3"``."""
    return " and ".join(
        f"attrs[{milvus_string(str(key))}] == {milvus_string(metadata_text(value))}" for key, value in filter.items()
    )


def _is_embedded(uri: str) -> bool:
    """A local milvus-lite path rather than a server URI."""
    return not uri.startswith(("http://", "https://", "tcp://", "grpc://", "unix:"))


def _id_list(ids: Sequence[str]) -> str:
    return "[" + ", ".join(milvus_string(item_id) for item_id in ids) + "]"


class MilvusGallery:
    """A `serving.index.gallery_backend.GalleryBackend` over one Milvus collection. Use `create` / `connect`."""

    store = "milvus"

    def __init__(
        self, client: Any, uri: str, collection: str, dim: int, index_type: str, options: dict[str, Any],
        bundle_sha256: str | None,
    ) -> None:
        self._client = client
        self.uri = uri
        self.collection = collection
        self.dim = dim
        self.index_type = index_type
        self.options = dict(options)
        self.bundle_sha256 = bundle_sha256

    @classmethod
    def create(
        cls, uri: str, collection: str, dim: int, *, index_type: str = "flat", options: dict[str, Any] | None = None,
        bundle_sha256: str | None = None,
    ) -> MilvusGallery:
        """A new, empty collection (an existing one of that name is dropped: build means rebuild)."""
        if index_type not in MILVUS_INDEX:
            raise GalleryIndexError(
                f"--index-type {index_type} is not available with --store milvus; use one of {sorted(MILVUS_INDEX)}"
            )
        from pymilvus import DataType

        if _is_embedded(uri):
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
        client = _client(uri)
        if client.has_collection(collection):
            client.drop_collection(collection)
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=_MAX_ID)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field("attrs", DataType.JSON)
        params = client.prepare_index_params()
        params.add_index(
            field_name="vector", index_type=MILVUS_INDEX[index_type], metric_type="IP",
            params=_build_params(index_type, options or {}),
        )
        client.create_collection(collection, schema=schema, index_params=params, consistency_level="Strong")
        return cls(client, uri, collection, dim, index_type, options or {}, bundle_sha256)

    @classmethod
    def connect(
        cls, uri: str, collection: str, dim: int, index_type: str, options: dict[str, Any], bundle_sha256: str | None
    ) -> MilvusGallery:
        """Open an existing collection; GalleryIndexError if it is missing or its dim differs."""
        client = _client(uri)
        if not client.has_collection(collection):
            raise GalleryIndexError(
                f"Milvus at {uri} has no collection {collection!r}; build it: cdd-index build ... --store milvus"
            )
        fields = {f["name"]: f for f in client.describe_collection(collection)["fields"]}
        found = int(fields.get("vector", {}).get("params", {}).get("dim", -1))
        if found != dim:
            raise GalleryIndexError(
                f"Milvus collection {collection!r} holds {found}-d vectors, the index manifest says {dim}; rebuild it"
            )
        client.load_collection(collection)
        return cls(client, uri, collection, dim, index_type, options, bundle_sha256)

    @staticmethod
    def exists(uri: str, collection: str) -> bool:
        """Whether Milvus at ``uri`` has ``collection`` (GalleryIndexError if it cannot be reached)."""
        client = _client(uri)
        try:
            return bool(client.has_collection(collection))
        finally:
            client.close()

    @property
    def client(self) -> Any:
        """The pymilvus `MilvusClient` (for collection-level calls such as properties)."""
        return self._client

    def present(self, ids: Sequence[str]) -> list[str]:
        """Those of ``ids`` that are in the gallery (one query per 1000 ids)."""
        return self._existing(list(ids))

    def location(self, directory: Path) -> dict[str, Any]:
        """How the index manifest records this store: an embedded path relative to ``directory``, or the URI."""
        path = Path(self.uri)
        if _is_embedded(self.uri) and path.parent == directory:
            return {"path": path.name, "collection": self.collection}
        return {"uri": self.uri, "collection": self.collection}

    # -- the GalleryBackend interface -------------------------------------------------------------------
    def __len__(self) -> int:
        rows = self._client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def __contains__(self, item_id: object) -> bool:
        return isinstance(item_id, str) and bool(self._existing([item_id]))

    def search(
        self, queries: np.ndarray, k: int, filter: dict[str, Any] | None = None, *, columns: bool = False
    ) -> list[list[Hit]] | list[FoundItems]:
        """Top-``k`` per query row, best first; ``filter`` as `GalleryIndex.search` (evaluated by Milvus);
        ``columns``: one `FoundItems` per row instead (the same hits; Milvus keeps no response fields)."""
        array = check_queries(queries, self.dim)
        k = check_k(k)
        results = self._client.search(
            self.collection,
            data=array.tolist(),
            limit=k,
            filter=filter_expression(filter) if filter else "",
            output_fields=["metadata"],
            search_params={"metric_type": "IP", "params": self._search_params()},
        )
        hits = [
            [Hit(str(hit["id"]), float(hit["distance"]), dict(hit["entity"].get("metadata") or {})) for hit in row]
            for row in results
        ]
        return [FoundItems.from_hits(row) for row in hits] if columns else hits

    def add(
        self, ids: Sequence[str], vectors: np.ndarray, metadata: Sequence[dict[str, Any]] | None = None, *,
        upsert: bool = False,
    ) -> int:
        """Add (or with ``upsert`` replace) items; all rows go in one Milvus upsert per 1000. Raises
        DuplicateIdError (unless ``upsert``), DimensionError, InvalidVectorsError."""
        ids = list(ids)
        metadata = [{} for _ in ids] if metadata is None else [dict(m) for m in metadata]
        array = check_vectors(vectors, len(ids), self.dim)
        check_items(ids, metadata)
        too_long = [i for i in ids if len(i.encode()) > _MAX_ID]
        if too_long:
            raise GalleryIndexError(f"ids longer than {_MAX_ID} bytes cannot go into Milvus: {too_long[:2]}")
        if not upsert:
            existing = self._existing(ids)
            if existing:
                raise DuplicateIdError(
                    f"{len(existing)} id(s) already in the gallery, e.g. {existing[:5]}; remove them first, use "
                    "other ids, or add with upsert to replace them; nothing was added"
                )
        rows = [
            {"id": i, "vector": v.tolist(), "metadata": m, "attrs": {str(a): metadata_text(b) for a, b in m.items()}}
            for i, v, m in zip(ids, array, metadata, strict=True)
        ]
        for start in range(0, len(rows), _BATCH):
            self._client.upsert(self.collection, rows[start : start + _BATCH])
        return len(ids)

    def remove(self, ids: Sequence[str]) -> int:
        """Remove items by id; UnknownIdError (nothing removed) if any is absent."""
        unique = list(dict.fromkeys(ids))
        present = set(self._existing(unique))
        unknown = [i for i in unique if i not in present]
        if unknown:
            raise UnknownIdError(f"{len(unknown)} id(s) not in the gallery, e.g. {unknown[:5]}; nothing was removed")
        for start in range(0, len(unique), _BATCH):
            self._client.delete(self.collection, filter=f"id in {_id_list(unique[start : start + _BATCH])}")
        return len(unique)

    def persist(self) -> None:
        """Ask Milvus to seal its in-memory segments (every acknowledged write is already in its log)."""
        self._client.flush(self.collection)

    def stats(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "count": len(self),
            "dim": self.dim,
            "metric": "cosine",
            "index_type": self.index_type,
            "bundle_sha256": self.bundle_sha256,
            "trained": True,
            "search": {"engine": "milvus", "milvus_index": MILVUS_INDEX[self.index_type], **self._search_params()},
            "milvus": {"uri": self.uri, "collection": self.collection},
            "options": dict(self.options),
        }

    def set_operating_point(self, name: str, value: int) -> None:
        """Set ``nprobe`` (ivf) or ``ef_search`` (hnsw) for the following searches."""
        self.options[name] = int(value)

    def close(self) -> None:
        """Close the client; for embedded milvus-lite also stop its in-process server, which releases the
        database's lock so another process (cdd-serve after cdd-index build) can open it."""
        self._client.close()
        if _is_embedded(self.uri):
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(self.uri)

    def _existing(self, ids: list[str]) -> list[str]:
        found: list[str] = []
        for start in range(0, len(ids), _BATCH):
            chunk = ids[start : start + _BATCH]
            rows = self._client.query(self.collection, filter=f"id in {_id_list(chunk)}", output_fields=["id"])
            found.extend(str(row["id"]) for row in rows)
        return found

    def _search_params(self) -> dict[str, Any]:
        if self.index_type == "ivf":
            return {"nprobe": int(self.options.get("nprobe", 16))}
        if self.index_type == "hnsw":
            return {"ef": int(self.options.get("ef_search", 64))}
        return {}


def _build_params(index_type: str, options: dict[str, Any]) -> dict[str, Any]:
    if index_type == "ivf":
        return {"nlist": int(options.get("nlist", 128))}
    if index_type == "hnsw":
        return {"M": int(options.get("hnsw_m", 32)), "efConstruction": int(options.get("ef_construction", 80))}
    return {}
