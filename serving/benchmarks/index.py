"""Index benchmark: gallery ingestion from real images, and search per index type and gallery size.

Ingestion: a real `build_index` over an image folder (decode threads + batched engine), compared with the
engine's offline images/s at the same batch size: busy fraction = ingestion images/s / offline images/s
(target >= 0.8). The pipeline's own engine-time / wall-time fraction is reported too.

Search: galleries of random unit vectors of the bundle's dimension (sizes beyond what an image folder
holds). "clustered" vectors (default) mimic embeddings: items are noisy copies of random centres
(``cluster_size`` consecutive items per centre, so every smaller gallery holds whole clusters) and each
query is a noisy copy of the centre of a gallery item, so a query has real neighbours; "uniform" vectors
are the hardest case for approximate indexes. Per (size, type): build seconds (add; ivf / ivfpq: k-means
on the first ``train_max`` items, then add the rest), single-query latency percentiles and QPS over at
most ``max_queries`` queries or ``search_seconds``, and recall@k vs exact search (numpy over the gallery).
Approximate types run at their operating point: the smallest nprobe / efSearch reaching recall@k >=
``target_recall`` on a separate draw of ``tune_queries`` queries (`serving.index.operating_point`, as
`cdd-index build` does), never at a library default. "milvus-flat" / "milvus-ivf" / "milvus-hnsw" are the
Milvus store (embedded milvus-lite in a temporary folder) measured in the same run, through the same
`search` call. IVF lists are capped at ``nlist_max``. A flat / hnsw build whose time,
extrapolated linearly from the previous size, exceeds ``max_build_s`` is skipped with that estimate as the
reason (ivf / ivfpq are never skipped: their training cost is capped by ``train_max``).
"""

from __future__ import annotations

import gc
import logging
import math
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serving.backends import Engine
from serving.benchmarks.engine import measure_point
from serving.benchmarks.latency import percentiles_ms
from serving.bundle import Manifest
from serving.index.build import build_index, items_from_folder
from serving.index.gallery import INDEX_TYPES, GalleryIndex
from serving.index.operating_point import PARAMETER, exact_neighbours, tune_operating_point
from serving.index.recall import recall_at_k

__all__ = [
    "MILVUS_TYPES",
    "IndexBenchConfig",
    "SyntheticGallery",
    "bench_ingest",
    "bench_search",
    "faiss_search_threads",
]

_LOG = logging.getLogger("serving.benchmarks")
_CHUNK = 65_536
_TRAINED = ("ivf", "ivfpq")
MILVUS_TYPES = ("milvus-flat", "milvus-ivf", "milvus-hnsw")
"""Benchmark types on the Milvus store (embedded milvus-lite): ``milvus-<our index type>``."""


@dataclass(frozen=True)
class IndexBenchConfig:
    """Gallery ``sizes`` x index ``types``; ``k`` for search and recall; search runs ``max_queries``
    single queries or ``search_seconds`` (at least ``min_queries``); recall on ``recall_queries`` of them.
    ``vectors`` "clustered" | "uniform"; IVF ``nlist_max``, ``nprobe``, ``train_max`` (items k-means and PQ
    train on); IVF-PQ ``pq_m`` sub-quantizers (None: dim / 16, i.e. 16-d sub-vectors, which FAISS trains
    ~20x faster on CPU than the index's own default of 4-d sub-vectors); HNSW ``hnsw_m``,
    ``ef_construction``, ``ef_search``; ``max_build_s`` (0 = no limit); FAISS OpenMP threads while
    searching ``search_threads`` (None = FAISS's default; builds always use the default); ingestion
    ``batch_size`` (None = the bundle's opt batch), decode ``workers``, ``offline_seconds`` to time the
    engine alone."""

    sizes: tuple[int, ...] = (10_000, 100_000)
    types: tuple[str, ...] = ("flat", "ivf", "hnsw", "ivfpq", "milvus-flat")
    k: int = 10
    max_queries: int = 200
    min_queries: int = 5
    search_seconds: float = 3.0
    recall_queries: int = 50
    vectors: str = "clustered"
    cluster_size: int = 16
    noise: float = 0.5
    nlist_max: int = 256
    nprobe: int = 16
    hnsw_m: int = 16
    ef_construction: int = 40
    ef_search: int = 64
    max_build_s: float = 0.0
    train_max: int = 20_000
    pq_m: int | None = None
    search_threads: int | None = 1
    batch_size: int | None = None
    workers: int = 2
    offline_seconds: float = 2.0
    target_recall: float = 0.95
    tune_queries: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        valid = (*INDEX_TYPES, *MILVUS_TYPES)
        bad = [t for t in self.types if t not in valid]
        if bad or not self.types:
            raise ValueError(f"--types: unknown index type(s) {bad or '(none)'}; choose from {valid}")
        if not self.sizes or min(self.sizes) < 1:
            raise ValueError(f"--sizes must be positive integers, found {list(self.sizes)}")
        if self.vectors not in ("clustered", "uniform"):
            raise ValueError(f"--vectors must be 'clustered' or 'uniform', found {self.vectors!r}")
        for name in (
            "k",
            "max_queries",
            "min_queries",
            "recall_queries",
            "cluster_size",
            "nlist_max",
            "train_max",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"index benchmark: {name} must be >= 1, found {getattr(self, name)}")


@contextmanager
def faiss_search_threads(threads: int | None) -> Iterator[None]:
    """Run the block with FAISS using ``threads`` OpenMP threads (None: unchanged), then restore the count.

    One query per call parallelises nothing in FAISS (it splits work over queries), but every call still
    opens an OpenMP region whose threads must be woken: on a busy machine that costs milliseconds."""
    if threads is None:
        yield
        return
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _unit(rows: np.ndarray) -> np.ndarray:
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


class SyntheticGallery:
    """``n`` float32 unit vectors of dimension ``dim`` (``vectors``), clustered or uniform, seeded, and
    matching queries. Prefixes of ``vectors`` are the smaller galleries."""

    def __init__(
        self, n: int, dim: int, kind: str, seed: int, cluster_size: int = 16, noise: float = 0.5
    ) -> None:
        self.kind, self.dim, self.noise = kind, dim, noise
        rng = np.random.default_rng(seed)
        self._rng = np.random.default_rng(seed + 1)
        n_centres = -(-n // cluster_size)
        self.centres = _unit(rng.standard_normal((n_centres, dim), dtype=np.float32))
        self.assignment = np.arange(n) // cluster_size  # contiguous: every prefix holds whole clusters
        self.vectors = np.empty((n, dim), dtype=np.float32)
        for start in range(0, n, _CHUNK):
            rows = rng.standard_normal((min(_CHUNK, n - start), dim), dtype=np.float32)
            if kind == "clustered":
                rows *= noise / math.sqrt(dim)
                rows += self.centres[self.assignment[start : start + rows.shape[0]]]
            self.vectors[start : start + rows.shape[0]] = _unit(rows)

    def queries(self, size: int, count: int) -> np.ndarray:
        """float32 (count, dim) unit queries for the gallery prefix of ``size`` items."""
        rows = self._rng.standard_normal((count, self.dim), dtype=np.float32)
        if self.kind == "clustered":
            picks = self._rng.integers(0, size, size=count)
            rows = rows * (self.noise / math.sqrt(self.dim)) + self.centres[self.assignment[picks]]
        return _unit(rows)


def bench_ingest(
    engine: Engine, manifest: Manifest, images: Path, cfg: IndexBenchConfig
) -> tuple[dict[str, Any], GalleryIndex]:
    """Offline engine images/s at the ingestion batch, then a real flat `build_index` of ``images``.
    Returns (facts with "busy_fraction" = ingestion / offline images/s, the built index)."""
    batch = min(cfg.batch_size or manifest.batch.opt, manifest.batch.max)
    offline = measure_point(engine, batch, warmup=2, seconds=cfg.offline_seconds, seed=cfg.seed)
    items = items_from_folder(images)
    index, stats = build_index(
        engine, manifest, items, index_type="flat", batch_size=batch, workers=cfg.workers, progress=False
    )
    facts = stats.to_dict()
    facts.pop("skipped_files")
    result = {
        "images_dir": images.as_posix(),
        "batch": batch,
        "workers": cfg.workers,
        "engine": engine.describe(),
        **facts,
        "images_per_s": stats.images_per_s,
        "pipeline_engine_busy_fraction": stats.engine_busy_fraction,
        "offline": offline,
        "busy_fraction": stats.images_per_s / offline["images_per_s"],
    }
    _LOG.info(
        "ingest: %d images in %.2f s (%.1f images/s), offline %.1f images/s, busy %.0f%%",
        stats.images,
        stats.seconds,
        stats.images_per_s,
        offline["images_per_s"],
        100 * result["busy_fraction"],
    )
    return result, index


def _base(index_type: str) -> str:
    return index_type.removeprefix("milvus-")


def _options(index_type: str, size: int, dim: int, cfg: IndexBenchConfig) -> dict[str, Any]:
    if index_type == "milvus-ivf":
        return {"nlist": max(1, min(int(4 * math.sqrt(size)), cfg.nlist_max)), "nprobe": cfg.nprobe}
    index_type = _base(index_type)
    if index_type in _TRAINED:
        train = _train_items(index_type, size, cfg)
        nlist = max(1, min(int(4 * math.sqrt(size)), train // 39, cfg.nlist_max))
        options = {"nlist": nlist, "nprobe": min(cfg.nprobe, nlist), "seed": cfg.seed}
        if index_type == "ivfpq":
            options["pq_m"] = cfg.pq_m or max(d for d in range(1, max(1, dim // 16) + 1) if dim % d == 0)
        return options
    if index_type == "hnsw":
        return {"hnsw_m": cfg.hnsw_m, "ef_construction": cfg.ef_construction, "ef_search": cfg.ef_search}
    return {}


def _train_items(index_type: str, size: int, cfg: IndexBenchConfig) -> int:
    return min(size, cfg.train_max) if index_type in _TRAINED else 0


def _build_milvus(index_type: str, vectors: np.ndarray, cfg: IndexBenchConfig, folder: Path) -> tuple[Any, float]:
    """A filled embedded-Milvus collection and its build seconds (inserts, flush, one search that makes
    milvus-lite build its index)."""
    from serving.index.milvus_gallery import MilvusGallery

    size, dim = vectors.shape
    tick = time.perf_counter()
    gallery = MilvusGallery.create(
        str(folder / "milvus.db"), "bench", dim, index_type=_base(index_type),
        options=_options(index_type, size, dim, cfg),
    )
    for start in range(0, size, 10_000):
        chunk = vectors[start : start + 10_000]
        gallery.add([f"v{i}" for i in range(start, start + chunk.shape[0])], chunk, upsert=True)
    gallery.persist()
    gallery.search(vectors[:1], cfg.k)
    return gallery, time.perf_counter() - tick


def _build(index_type: str, vectors: np.ndarray, cfg: IndexBenchConfig) -> tuple[GalleryIndex, float]:
    """A filled index and its build seconds. ivf / ivfpq: the first ``train_max`` items go in and the index
    is rebuilt (k-means on them), then the rest are added to the trained structure."""
    size = vectors.shape[0]
    dim = vectors.shape[1]
    index = GalleryIndex(dim, index_type, options=_options(index_type, size, dim, cfg))
    ids = [f"v{i}" for i in range(size)]
    train = _train_items(index_type, size, cfg)
    tick = time.perf_counter()
    if train:
        index.add(ids[:train], vectors[:train])
        index.rebuild()
    for start in range(train, size, _CHUNK):
        index.add(ids[start : start + _CHUNK], vectors[start : start + _CHUNK])
    index.settle()  # no background rebuild left running while searches are timed
    return index, time.perf_counter() - tick


def _recall(index: Any, queries: np.ndarray, truth: list[list[tuple[str, float]]], k: int) -> float:
    return recall_at_k(index.search(queries, k), truth)


def _tune(index: Any, index_type: str, gallery: SyntheticGallery, size: int, cfg: IndexBenchConfig) -> dict | None:
    """Set the operating point of an approximate index on a separate draw of queries; its facts."""
    base = _base(index_type)
    if base not in PARAMETER:
        return None
    queries = gallery.queries(size, cfg.tune_queries)
    ids = [f"v{i}" for i in range(size)]
    truth = exact_neighbours(queries, gallery.vectors[:size], ids, cfg.k)
    upper = index.stats()["search"].get("nlist") or _options(index_type, size, gallery.dim, cfg).get("nlist")
    point = tune_operating_point(
        base, index.search, index.set_operating_point, queries, truth, k=cfg.k, target=cfg.target_recall,
        upper=upper if "nprobe" == PARAMETER[base] else None,
    )
    return point.to_dict()


def _search_row(index: Any, queries: np.ndarray, truth: list[list[tuple[str, float]]],
                cfg: IndexBenchConfig) -> dict[str, Any]:
    samples: list[float] = []
    start = time.perf_counter()
    for query in queries:
        tick = time.perf_counter()
        index.search(query[None], cfg.k)
        samples.append(time.perf_counter() - tick)
        if len(samples) >= cfg.min_queries and time.perf_counter() - start >= cfg.search_seconds:
            break
    used = min(len(samples), cfg.recall_queries)
    recall = _recall(index, queries[:used], truth[:used], cfg.k)
    return {
        "latency": percentiles_ms(samples),
        "qps": len(samples) / sum(samples),
        "recall": recall,
        "recall_queries": min(len(samples), cfg.recall_queries),
    }


def _estimate(previous: dict[str, tuple[int, float]], index_type: str, size: int) -> float | None:
    """Linear extrapolation from the previous size, for types built by insertion (None for ivf / ivfpq,
    whose training is capped at ``train_max`` items, and for a type not built yet)."""
    if _base(index_type) in _TRAINED or index_type not in previous:
        return None
    prev_size, prev_seconds = previous[index_type]
    return prev_seconds * size / prev_size


def bench_search(dim: int, cfg: IndexBenchConfig) -> dict[str, Any]:
    """Build and search every (size, type): {"config", "dim", "rows": [{size, type, build_s, options,
    search (engine facts), latency, qps, recall, ...}], "skipped": [{size, type, reason}]}."""
    sizes = sorted(set(cfg.sizes))
    gallery = SyntheticGallery(sizes[-1], dim, cfg.vectors, cfg.seed, cfg.cluster_size, cfg.noise)
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    previous: dict[str, tuple[int, float]] = {}
    for size in sizes:
        queries = gallery.queries(size, cfg.max_queries)
        truth = exact_neighbours(queries[: cfg.recall_queries], gallery.vectors[:size], [f"v{i}" for i in range(size)],
                                 cfg.k)
        for index_type in cfg.types:
            estimate = _estimate(previous, index_type, size)
            if cfg.max_build_s > 0 and estimate is not None and estimate > cfg.max_build_s:
                reason = f"estimated build {estimate:.0f} s > --max-build-s {cfg.max_build_s:g} s"
                skipped.append({"size": size, "type": index_type, "reason": reason})
                _LOG.info("index %s at %d skipped: %s", index_type, size, reason)
                continue
            with tempfile.TemporaryDirectory(prefix="cdd-bench-milvus-") as folder:
                if index_type in MILVUS_TYPES:
                    index, seconds = _build_milvus(index_type, gallery.vectors[:size], cfg, Path(folder))
                else:
                    index, seconds = _build(index_type, gallery.vectors[:size], cfg)
                previous[index_type] = (size, seconds)
                with faiss_search_threads(cfg.search_threads):
                    point = _tune(index, index_type, gallery, size, cfg)
                    options = _options(index_type, size, dim, cfg)
                    if point is not None:
                        options[point["parameter"]] = point["value"]
                    row = {
                        "size": size,
                        "type": index_type,
                        "build_s": seconds,
                        "train_items": _train_items(_base(index_type), size, cfg),
                        "build_items_per_s": size / seconds,
                        "options": options,
                        "operating_point": point,
                        "search": index.stats()["search"],
                    }
                    row.update(_search_row(index, queries, truth, cfg))
                if index_type in MILVUS_TYPES:
                    index.close()
            rows.append(row)
            _LOG.info(
                "index %s at %d: build %.1f s, p50 %.3f ms, %.0f QPS, recall@%d %.3f",
                index_type,
                size,
                seconds,
                row["latency"]["p50_ms"],
                row["qps"],
                cfg.k,
                row["recall"],
            )
            del index
            gc.collect()
    return {"config": asdict(cfg), "dim": dim, "rows": rows, "skipped": skipped}
