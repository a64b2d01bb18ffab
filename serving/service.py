"""`RetrievalService`: search, embed and gallery management in plain Python (no gRPC types).

Built from an engine, a gallery index and the bundle manifest. Image decoding and preprocessing run in
the calling thread; only the engine call goes through the `DynamicBatcher`. Deadlines are absolute
``time.monotonic()`` seconds. Each call gets a `CallBudget`: before every image it decodes the service
checks the deadline and the call's cancellation and charges the image's declared pixels against the
per-call budget (``max_call_pixels``), so a call whose client has gone stops within one image's decode;
the batcher checks again before each engine chunk, while queued, and after.

Raises the domain errors of `serving.errors`, `serving.preprocess` (ImageDecodeError, ImageTooLargeError)
and `serving.index.errors`; the gRPC servicer maps each to a status code.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from serving.backends import Engine
from serving.batcher import DynamicBatcher
from serving.bundle import Manifest
from serving.call_budget import CallBudget
from serving.compatibility import GalleryBundle
from serving.config import ServeConfig
from serving.errors import DeadlineExceeded, InvalidInput, TooLarge
from serving.index.found_items import FoundItems, Hit
from serving.index.gallery_backend import GalleryBackend
from serving.preprocess import ImageDecodeError, ImageTooLargeError, declared_pixels, image_to_model_input
from serving.request_limits import check_id, check_metadata

__all__ = ["BatchSteps", "ServiceLimits", "Query", "NewItem", "RetrievalService"]


@dataclass(frozen=True)
class ServiceLimits:
    """Per-call limits: ``max_k`` results, ``max_pixels`` per decoded image (width x height),
    ``max_call_pixels`` summed over the images of one call, ``max_queries`` per SearchBatch, ``max_items``
    per AddItems / RemoveItems, ``max_id_bytes`` per id, ``max_metadata_bytes`` per item's metadata or
    query's filters (see `serving.request_limits`)."""

    max_k: int = ServeConfig.max_k
    max_pixels: int = ServeConfig.max_pixels
    max_call_pixels: int = ServeConfig.max_call_pixels
    max_queries: int = ServeConfig.max_queries
    max_items: int = ServeConfig.max_items
    max_id_bytes: int = ServeConfig.max_id_bytes
    max_metadata_bytes: int = ServeConfig.max_metadata_bytes

    def __post_init__(self) -> None:
        for name in ("max_k", "max_pixels", "max_call_pixels", "max_queries", "max_items", "max_id_bytes",
                     "max_metadata_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"ServiceLimits.{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class Query:
    """One search: encoded ``image`` bytes, ``k`` results, optional metadata ``filters``."""

    image: bytes
    k: int
    filters: Mapping[str, str] | None = None


@dataclass(frozen=True)
class BatchSteps:
    """What the batch worker runs for a batch of Searches: ``decode`` one `Query` to its uint8 (H, W, 3)
    model input, ``embed`` uint8 (N, H, W, 3) to float32 (N, D) rows, ``search`` (rows, queries) to one
    `FoundItems` per query."""

    decode: Callable[[Query], np.ndarray]
    embed: Callable[[np.ndarray], np.ndarray]
    search: Callable[[np.ndarray, Sequence[Query]], list[FoundItems]]


@dataclass(frozen=True)
class NewItem:
    """A gallery item to add: exactly one of ``image`` (encoded bytes) or ``vector`` (dim floats)."""

    id: str
    image: bytes | None = None
    vector: np.ndarray | Sequence[float] | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


class RetrievalService:
    """Search / embed / add / remove / stats over one engine + gallery index. Thread-safe (the index and
    the batcher lock). ``batcher`` defaults to a DynamicBatcher over ``engine.embed`` (ServeConfig's
    max_batch, capped at manifest.batch.max, and window); the service closes it in `close`.
    ``gallery_bundle``: the bundle the index was built with when it is not ``manifest``'s own (asymmetric
    retrieval, `serving.compatibility.gallery_bundle_for`); None means the same bundle. ``clock`` is what
    deadlines are measured on (time.monotonic; tests inject one)."""

    def __init__(
        self,
        engine: Engine,
        index: GalleryBackend,
        manifest: Manifest,
        limits: ServiceLimits | None = None,
        batcher: DynamicBatcher | None = None,
        gallery_bundle: GalleryBundle | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        dim = manifest.output.dim
        if index.dim != dim:
            raise ValueError(
                f"the gallery index holds {index.dim}-d vectors but bundle {manifest.name!r} embeds {dim}-d; "
                "rebuild the index with this bundle (cdd-index build)"
            )
        self.engine = engine
        self.index = index
        self.manifest = manifest
        self.limits = limits or ServiceLimits()
        self.batcher = batcher or DynamicBatcher(engine.embed, max_batch=min(ServeConfig.max_batch, manifest.batch.max))
        self._bundle_sha256 = manifest.sha256()
        self.gallery_bundle = gallery_bundle or GalleryBundle(self._bundle_sha256, manifest.name, asymmetric=False)
        self._closed = False
        self._clock = clock
        # A Search's image is decoded, and its gallery search run, on the batcher's worker, per engine batch
        steps = self.batch_steps()
        self.batcher.attach_search(steps.search, steps.decode)

    def batch_steps(self) -> BatchSteps:
        """The steps the batcher's worker runs for Searches (its engine call is ``engine.embed``), for
        benchmarks that cost each one (`serving.benchmarks.search_cost`)."""
        return BatchSteps(decode=lambda query: self._decode(query.image, ""), embed=self.engine.embed,
                          search=self._search_vectors)

    # -- queries --------------------------------------------------------------------------------------

    def search(
        self, image: bytes, k: int, filters: Mapping[str, str] | None = None, deadline: float | None = None
    ) -> list[Hit]:
        """The ``k`` (1..max_k) nearest gallery items to ``image``, best first; fewer if fewer match. The
        image is decoded and the gallery searched on the batcher's worker, one search per engine batch."""
        query = self.search_query(image, k, filters, deadline)
        found = self.batcher.run(None, deadline=deadline, query=query)
        self.check_deadline(deadline)
        return found.hits()

    def search_query(
        self, image: bytes, k: int, filters: Mapping[str, str] | None = None, deadline: float | None = None
    ) -> Query:
        """A Search's checks before it is queued (k, filters, the image's declared pixels against the call's
        budget, the deadline and the call's cancellation); returns the `Query` to submit to the batcher
        (``batcher.submit(None, deadline, query)``), whose answer is the query's `FoundItems`. Decodes
        nothing: cheap enough for an event loop."""
        query = Query(image, k, filters)
        self._check_query(query, "")
        budget = self._budget(deadline)
        self._charge(image, "", budget)
        budget.check("embedding")
        return query

    def check_deadline(self, deadline: float | None) -> None:
        """Raise DeadlineExceeded when ``deadline`` passed (after the batcher answered a call)."""
        if deadline is not None and self._clock() >= deadline:
            raise DeadlineExceeded("the deadline passed while the image was embedded; use a longer deadline")

    def search_batch(self, queries: Sequence[Query], deadline: float | None = None) -> list[list[Hit]]:
        """One result list per query, in order; all images go through the batcher as one request."""
        if len(queries) > self.limits.max_queries:
            raise TooLarge(
                f"SearchBatch has {len(queries)} queries, this server takes at most "
                f"{self.limits.max_queries} per call; split the batch"
            )
        return [found.hits() for found in self._search(queries, deadline, where="queries")] if queries else []

    def embed(self, image: bytes, deadline: float | None = None) -> np.ndarray:
        """float32 (D,) embedding of ``image`` (unit L2 norm when the manifest says ``normalized``)."""
        budget = self._budget(deadline)
        return self._embed(self._pixels(image, "", budget)[None], budget)[0]

    # -- gallery management ---------------------------------------------------------------------------

    def add_items(self, items: Sequence[NewItem], deadline: float | None = None, upsert: bool = False) -> int:
        """Add items (all or nothing); returns how many were added. Image items are embedded here;
        vectors are L2-normalised. With ``upsert`` present ids are replaced (a retry is safe). Raises
        InvalidInput, TooLarge, DuplicateIdError (id present without upsert, or repeated)."""
        self._check_count(len(items), "AddItems", "items")
        if not items:
            return 0
        budget = self._budget(deadline)
        vectors = np.zeros((len(items), self.index.dim), dtype=np.float32)
        image_rows: list[int] = []
        images: list[np.ndarray] = []
        for i, item in enumerate(items):
            check_id(item.id, f"items[{i}]", self.limits.max_id_bytes)
            where = f"items[{i}] (id {item.id!r})"
            check_metadata(item.metadata, where, self.limits.max_metadata_bytes)
            if (item.image is None) == (item.vector is None):
                raise InvalidInput(f"{where}: give exactly one of image or vector, found {_sources(item)}")
            if item.vector is not None:
                vectors[i] = self._unit_vector(item.vector, where)
            else:
                image_rows.append(i)
                images.append(self._pixels(item.image, where, budget))
        if images:
            vectors[image_rows] = self._embed(np.stack(images), budget)
        budget.check("the gallery change")
        metadata = [dict(item.metadata) for item in items]
        self.index.add([item.id for item in items], vectors, metadata, upsert=upsert)
        return len(items)

    def remove_items(self, ids: Sequence[str]) -> int:
        """Remove items by id (all or nothing); returns how many. Raises UnknownIdError naming the ids."""
        self._check_count(len(ids), "RemoveItems", "ids")
        for i, item_id in enumerate(ids):
            check_id(item_id, f"ids[{i}]", self.limits.max_id_bytes)
        if not ids:
            return 0
        return int(self.index.remove(list(ids)))

    def count(self) -> int:
        return len(self.index)

    def stats(self) -> dict[str, Any]:
        """count, dim, index_type, metric, bundle_name, bundle_sha256 (the bundle embedding queries),
        gallery_bundle_name, gallery_bundle_sha256, asymmetric (the bundle that embedded the gallery, and
        whether it is another one), backend, device, max_k, max_pixels, batching (BatcherStats as a dict)
        and index (GalleryIndex.stats())."""
        index_stats = dict(self.index.stats())
        return {
            "count": len(self.index),
            "dim": self.index.dim,
            "index_type": index_stats.get("index_type", ""),
            "metric": index_stats.get("metric", self.manifest.metric),
            "bundle_name": self.manifest.name,
            "bundle_sha256": self._bundle_sha256,
            "gallery_bundle_name": self.gallery_bundle.name,
            "gallery_bundle_sha256": self.gallery_bundle.sha256,
            "asymmetric": self.gallery_bundle.asymmetric,
            "backend": self.engine.name,
            "device": self.engine.device,
            "max_k": self.limits.max_k,
            "max_pixels": self.limits.max_pixels,
            "batching": asdict(self.batcher.stats()),
            "index": index_stats,
        }

    def warmup(self) -> float:
        """Run the engine at batch sizes 1 and the batcher's max, and one search; returns seconds taken."""
        start = time.monotonic()
        spec = self.manifest.input
        for n in sorted({1, self.batcher.max_batch}):
            self.engine.embed(np.zeros((n, spec.height, spec.width, spec.channels), dtype=np.uint8))
        if len(self.index):
            probe = np.zeros((1, self.index.dim), dtype=np.float32)
            probe[0, 0] = 1.0
            self.index.search(probe, 1)
        return time.monotonic() - start

    def close(self) -> None:
        """Finish queued embedding work, stop the batcher, then close the gallery (the service owns it: a
        FAISS gallery folds its write log into a snapshot and releases its folder). Idempotent."""
        self.batcher.close()
        if not self._closed:
            self._closed = True
            self.index.close()

    def __enter__(self) -> RetrievalService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------------------

    def _check_query(self, query: Query, where: str) -> None:
        self._check_k(query.k, where)
        check_metadata(query.filters, where or "search", self.limits.max_metadata_bytes, "filters")

    def _search(self, queries: Sequence[Query], deadline: float | None, where: str) -> list[FoundItems]:
        for i, query in enumerate(queries):
            self._check_query(query, _label(where, i))
        budget = self._budget(deadline)
        pixels = np.stack([self._pixels(q.image, _label(where, i), budget) for i, q in enumerate(queries)])
        return self._search_vectors(self._embed(pixels, budget), queries)

    def _search_vectors(self, vectors: np.ndarray, queries: Sequence[Query]) -> list[FoundItems]:
        """The hits of each query for its row of ``vectors`` (`FoundItems`: `hits` for the API, `reply` for
        the gRPC Search handler)."""
        # One index search per distinct filter (one for a whole unfiltered batch), at the largest k asked.
        groups: dict[tuple[tuple[str, str], ...], list[int]] = {}
        for i, q in enumerate(queries):
            groups.setdefault(tuple(sorted((q.filters or {}).items())), []).append(i)
        results: dict[int, FoundItems] = {}
        for key, members in groups.items():
            k = max(int(queries[i].k) for i in members)
            found = self.index.search(vectors[members], k, filter=dict(key) if key else None, columns=True)
            for i, items in zip(members, found, strict=True):
                results[i] = items.top(int(queries[i].k))
        return [results[i] for i in range(len(queries))]

    def _budget(self, deadline: float | None) -> CallBudget:
        return CallBudget(deadline, self.limits.max_call_pixels, self._clock)

    def _pixels(self, data: Any, where: str, budget: CallBudget) -> np.ndarray:
        """Decode one image of a call: check the call is still wanted, charge its declared pixels, decode."""
        self._charge(data, where, budget)
        return self._decode(data, where)

    def _charge(self, data: Any, where: str, budget: CallBudget) -> None:
        """Check the call is still wanted and charge the image's declared pixels to it."""
        budget.check(f"decoding {where or 'the image'}")
        declared = declared_pixels(data) if isinstance(data, bytes | bytearray) else None
        if declared is not None and declared <= self.limits.max_pixels:  # a larger one is refused by decoding
            budget.charge(declared, where or "image")

    def _decode(self, data: Any, where: str) -> np.ndarray:
        """The model input of one image; ImageDecodeError / ImageTooLargeError name ``where``."""
        try:
            return image_to_model_input(data, self.manifest, self.limits.max_pixels)
        except (ImageDecodeError, ImageTooLargeError) as exc:
            if where:
                raise type(exc)(f"{where}: {exc}") from exc
            raise

    def _embed(self, pixels: np.ndarray, budget: CallBudget) -> np.ndarray:
        budget.check("embedding")
        vectors = self.batcher.run(pixels, deadline=budget.deadline)
        self._check_deadline(budget)
        return vectors

    def _check_deadline(self, budget: CallBudget) -> None:
        self.check_deadline(budget.deadline)

    def _check_k(self, k: Any, where: str) -> None:
        name = f"{where}.k" if where else "k"
        if isinstance(k, bool) or not isinstance(k, int | np.integer):
            raise InvalidInput(f"{name} must be an integer, found {type(k).__name__}")
        if not 1 <= k <= self.limits.max_k:
            raise InvalidInput(
                f"{name} must be between 1 and {self.limits.max_k} (this server's max k), found {k}; "
                "set k within that range"
            )

    def _check_count(self, n: int, call: str, what: str) -> None:
        if n > self.limits.max_items:
            raise TooLarge(
                f"{call} has {n} {what}, this server takes at most {self.limits.max_items} per call; "
                "split it into several calls"
            )

    def _unit_vector(self, values: Any, where: str) -> np.ndarray:
        vector = np.asarray(values, dtype=np.float32)
        if vector.ndim != 1 or vector.shape[0] != self.index.dim:
            raise InvalidInput(
                f"{where}: vector has shape {vector.shape}, the gallery holds ({self.index.dim},) vectors "
                f"from bundle {self.manifest.name!r}; send a vector produced by this server's Embed"
            )
        norm = float(np.linalg.norm(vector))
        if not np.isfinite(norm) or norm == 0.0:
            raise InvalidInput(f"{where}: vector must be finite and non-zero, found norm {norm}")
        return vector / norm


def _label(where: str, i: int) -> str:
    return f"{where}[{i}]" if where else ""


def _sources(item: NewItem) -> str:
    given = [name for name in ("image", "vector") if getattr(item, name) is not None]
    return " and ".join(given) if given else "neither"

