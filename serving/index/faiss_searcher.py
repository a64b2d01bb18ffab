"""`FaissSearcher`: the FAISS search structure behind a gallery index (flat / ivf / ivfpq / hnsw / factory).

Inner product on unit vectors (= cosine). Items are FAISS ids (the table's int64 labels).
- flat: IndexIDMap2(IndexFlatIP), exact. Trained from the start.
- ivf / ivfpq: IndexIVFFlat / IndexIVFPQ with an IndexFlatIP quantizer; ``nlist`` is chosen from the
  training size (about 4 sqrt(N), at most N / 39 so k-means has enough points per centroid) unless given.
- hnsw: IndexIDMap2(IndexHNSWFlat). FAISS HNSW cannot remove, so removed labels become tombstones that
  searches skip; `needs_rebuild` says when they pass a quarter of the graph, and the gallery then rebuilds
  it in the background (never inside a request).
- factory: any FAISS index factory string (``options["factory"]``, see `serving.index.faiss_factory`);
  trained on the gallery when FAISS says it needs training; removals FAISS cannot do become tombstones.
  Filtered searches of a factory index are answered exactly by the gallery (``filters_in_structure``):
  not every FAISS structure honours an ID selector. Factory structures search on the CPU.
Metadata filters arrive as the allowed labels and go to FAISS as an ``IDSelectorBatch`` in the search
parameters (with ``nprobe`` / ``efSearch``), so FAISS skips the other items itself. Searches only read
the index, so several threads may search at once; `add` / `remove` need the caller's write lock.
With ``use_gpu`` (faiss built with GPU support) flat / ivf / ivfpq searches run on a GPU replica of the
CPU index, made lazily; the CPU index stays the master (serialisation); adds and removals are applied to both
copies. The rules of `serving.index.faiss_gpu` decide what may run there: filtered searches go to the CPU
index unless the GPU indexes apply selectors (cuVS), an IVF-PQ index the GPU cannot hold stays on the CPU
(logged once), and one lock serialises every use of the GPU copy (GPU indexes are not thread-safe).
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Any

import faiss
import numpy as np

from serving.index import faiss_factory
from serving.index.faiss_gpu import FLOAT16_TABLE_PQ_M, FaissGpu, gpu_pq_choice, ivfpq_gpu_problem

__all__ = ["FaissSearcher", "faiss_gpu_count"]

_TOMBSTONE_REBUILD_FRACTION = 0.25
_LOG = logging.getLogger("serving.index")


def faiss_gpu_count() -> int:
    """GPUs visible to faiss (0 for a CPU-only faiss build)."""
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def _choose_nlist(n: int) -> int:
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def _choose_pq(dim: int, n: int, options: dict[str, Any], gpu: FaissGpu | None = None) -> tuple[int, int]:
    """(m, nbits): the options' values where given; the rest a GPU-searchable choice when ``gpu`` is given
    and has one, else the CPU default (largest divisor of dim <= dim / 4, bits from the training size)."""
    choice = gpu_pq_choice(gpu, dim, n) if gpu is not None and not options.get("pq_m") else None
    if choice is not None:
        return choice[0], int(options.get("pq_nbits") or choice[1])
    m = options.get("pq_m") or max(d for d in range(1, max(1, dim // 4) + 1) if dim % d == 0)
    if dim % m:
        raise ValueError(f"ivfpq: pq_m={m} must divide the embedding dim {dim}")
    nbits = options.get("pq_nbits") or max(1, min(8, int(math.log2(max(2, n // 39)))))
    return int(m), int(nbits)


class FaissSearcher:
    """A `serving.index.searcher.Searcher` over one FAISS index, plus the bookkeeping FAISS lacks
    (tombstones, GPU replica). Searches may run concurrently; `add` / `remove` / `train` need the caller's
    write lock. ``gpu``: the GPU capability (detected when None and ``use_gpu``)."""

    def __init__(self, index_type: str, dim: int, options: dict[str, Any], use_gpu: bool = False,
                 gpu: FaissGpu | None = None) -> None:
        self.index_type = index_type
        self.dim = dim
        self.options = dict(options)
        cpu_only = index_type in ("hnsw", "factory")
        if use_gpu and not cpu_only and gpu is None:
            gpu = FaissGpu.detect(int(self.options.get("gpu", 0)))
        self.use_gpu = use_gpu and not cpu_only and gpu is not None and gpu.devices > 0
        self._gpu_support = gpu if self.use_gpu else None
        self._gpu_lock = threading.Lock()  # around every use of the GPU copy (GPU indexes are not thread-safe)
        self._gpu_refusal: str | None = None
        self._dead: set[int] = set()
        self._gpu: Any = None
        self._gpu_resources: Any = None
        self._cpu: Any = None
        # Whether the structure is trained on the gallery first: ivf / ivfpq, and factory strings FAISS says need it.
        self.needs_training = index_type in ("ivf", "ivfpq")
        if index_type == "flat":
            self._cpu = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        elif index_type == "hnsw":
            self._cpu = self._new_hnsw()
        elif index_type == "factory":
            fresh = faiss_factory.new_factory_index(self.options["factory"], dim)
            self.needs_training = not fresh.is_trained
            if not self.needs_training:
                self._cpu = fresh
                self._apply_knob()

    @property
    def filters_in_structure(self) -> bool:
        """Whether filtered searches go to FAISS as an ID selector (else the gallery searches exactly)."""
        return self.index_type != "factory"

    @property
    def is_trained(self) -> bool:
        return self._cpu is not None

    @property
    def ntotal(self) -> int:
        """Live items (tombstones excluded)."""
        return 0 if self._cpu is None else int(self._cpu.ntotal) - len(self._dead)

    def train(self, vectors: np.ndarray) -> None:
        """Build and train an ivf / ivfpq / factory index on ``vectors`` (N, dim); N >= 1 (an IVF factory
        string needs N >= its number of lists: ValueError naming both)."""
        if self.index_type == "factory":
            self._train_factory(vectors)
            return
        n = vectors.shape[0]
        nlist = int(self.options.get("nlist") or _choose_nlist(n))
        quantizer = faiss.IndexFlatIP(self.dim)
        if self.index_type == "ivf":
            index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            m, nbits = _choose_pq(self.dim, n, self.options, self._gpu_support)
            index = faiss.IndexIVFPQ(quantizer, self.dim, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
            self.options.update(pq_m=m, pq_nbits=nbits)
        index.cp.seed = int(self.options.get("seed", 1234))
        index.train(np.ascontiguousarray(vectors, dtype=np.float32))
        index.nprobe = int(self.options.get("nprobe") or max(1, min(nlist, 16)))
        self.options.update(nlist=nlist, nprobe=index.nprobe)
        self._cpu = index
        with self._gpu_lock:
            self._gpu, self._gpu_refusal = None, None

    def _train_factory(self, vectors: np.ndarray) -> None:
        index = faiss_factory.new_factory_index(self.options["factory"], self.dim)
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.cp.seed = int(self.options.get("seed", 1234))
            if vectors.shape[0] < ivf.nlist:
                raise ValueError(
                    f"--factory {self.options['factory']!r}: {ivf.nlist} inverted lists need at least as many "
                    f"gallery vectors to train on, found {vectors.shape[0]}; use fewer lists (IVF<n>)"
                )
        index.train(np.ascontiguousarray(vectors, dtype=np.float32))
        self._cpu = index
        self._apply_knob()

    def _apply_knob(self) -> None:
        """Factory index: set its knob from the options (default nprobe min(nlist, 16)) and record it."""
        knob = faiss_factory.search_knob(self._cpu)
        if knob == "nprobe":
            nlist = faiss_factory.nlist_of(self._cpu)
            value = int(self.options.get("nprobe") or max(1, min(nlist, 16)))
            self.options.update(nlist=nlist)
        elif knob == "ef_search":
            value = int(self.options.get("ef_search") or 64)
        else:
            return
        faiss_factory.set_search_knob(self._cpu, knob, value)
        self.options[knob] = value

    @property
    def search_knob(self) -> str | None:
        """The operating-point parameter of this structure (nprobe / ef_search), None for exact ones."""
        if self.index_type == "factory":
            return None if self._cpu is None else faiss_factory.search_knob(self._cpu)
        return {"ivf": "nprobe", "ivfpq": "nprobe", "hnsw": "ef_search"}.get(self.index_type)

    def add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        labels = np.ascontiguousarray(labels, dtype=np.int64)
        self._cpu.add_with_ids(vectors, labels)
        with self._gpu_lock:
            if self._gpu is not None:
                self._gpu.add_with_ids(vectors, labels)

    def remove(self, labels: np.ndarray) -> None:
        labels = np.ascontiguousarray(labels, dtype=np.int64)
        if self.index_type == "hnsw":
            self._dead.update(int(label) for label in labels)
            return
        if self.index_type == "factory":
            try:
                self._cpu.remove_ids(labels)
            except RuntimeError:  # this structure cannot remove: skip the labels until the next rebuild
                self._dead.update(int(label) for label in labels)
            return
        self._cpu.remove_ids(labels)
        with self._gpu_lock:
            if self._gpu is not None:
                try:
                    self._gpu.remove_ids(labels)
                except RuntimeError:  # a GPU index type without remove_ids: re-clone lazily
                    self._gpu = None

    @property
    def needs_rebuild(self) -> bool:
        """True once hnsw tombstones pass a quarter of the graph (rebuild it, off the request path)."""
        return self._cpu is not None and len(self._dead) > _TOMBSTONE_REBUILD_FRACTION * max(1, self._cpu.ntotal)

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores (Q, k) float32, labels (Q, k) int64); missing slots have label -1. With
        ``allowed`` (int64 labels) only those items are considered (a FAISS ID selector, applied on the GPU
        copy only where the GPU indexes honour it, else the search runs on the CPU index)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        q = queries.shape[0]
        if self._cpu is None or self.ntotal == 0 or k <= 0:
            return np.full((q, max(k, 0)), -np.inf, np.float32), np.full((q, max(k, 0)), -1, np.int64)
        dead = 0 if allowed is not None else len(self._dead)
        fetch = min(k + dead, int(self._cpu.ntotal))
        params = None
        if allowed is not None:
            selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
            params = self._params(selector)
        found = self._gpu_search(queries, fetch, params) if self._on_gpu(allowed is not None, fetch) else None
        scores, labels = found if found is not None else self._cpu.search(queries, fetch, params=params)
        if dead:
            scores, labels = self._drop_dead(scores, labels, k)
        if labels.shape[1] < k:
            pad = k - labels.shape[1]
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            labels = np.pad(labels, ((0, 0), (0, pad)), constant_values=-1)
        return scores[:, :k], labels[:, :k]

    def compact(self) -> None:
        """Rebuild an hnsw graph without its tombstones (no-op for other types)."""
        if self.index_type != "hnsw" or not self._dead:
            return
        inner = faiss.downcast_index(self._cpu.index)
        vectors = inner.storage.reconstruct_n(0, int(inner.ntotal))
        labels = faiss.vector_to_array(self._cpu.id_map).astype(np.int64)
        keep = ~np.isin(labels, np.fromiter(self._dead, dtype=np.int64, count=len(self._dead)))
        self._cpu = self._new_hnsw()
        self._dead.clear()
        if keep.any():
            self._cpu.add_with_ids(np.ascontiguousarray(vectors[keep]), np.ascontiguousarray(labels[keep]))

    @property
    def tombstones(self) -> list[int]:
        """Removed hnsw labels still in the graph (saved with it, so a reload keeps skipping them)."""
        return sorted(self._dead)

    def serialize(self) -> bytes:
        """The CPU index as bytes (hnsw tombstones included; see `tombstones`)."""
        return faiss.serialize_index(self._cpu).tobytes()

    @classmethod
    def deserialize(
        cls,
        data: bytes,
        index_type: str,
        dim: int,
        options: dict[str, Any],
        use_gpu: bool = False,
        tombstones: list[int] | None = None,
        gpu: FaissGpu | None = None,
    ) -> FaissSearcher:
        searcher = cls(index_type, dim, options, use_gpu, gpu)
        searcher._dead = {int(label) for label in tombstones or ()}
        searcher._cpu = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        if int(searcher._cpu.d) != dim:
            raise ValueError(f"serialised faiss index has dim {searcher._cpu.d}, expected {dim}")
        if index_type in ("ivf", "ivfpq"):
            if "nprobe" in options:
                searcher._cpu.nprobe = int(options["nprobe"])
            searcher.options.update(nlist=int(searcher._cpu.nlist), nprobe=int(searcher._cpu.nprobe))
        elif index_type == "hnsw" and "ef_search" in options:
            faiss.downcast_index(searcher._cpu.index).hnsw.efSearch = int(options["ef_search"])
        elif index_type == "factory":
            searcher._apply_knob()
        return searcher

    def set_search_param(self, name: str, value: int) -> None:
        """Set ``nprobe`` (ivf / ivfpq) or ``ef_search`` (hnsw) on the live index (an operating point)."""
        if self.index_type == "factory":
            faiss_factory.set_search_knob(self._cpu, name, value)
        elif name == "nprobe" and self.index_type in ("ivf", "ivfpq"):
            self._cpu.nprobe = int(value)
            with self._gpu_lock:
                self._gpu = None
        elif name == "ef_search" and self.index_type == "hnsw":
            faiss.downcast_index(self._cpu.index).hnsw.efSearch = int(value)
        else:
            raise ValueError(f"{name!r} is not a search parameter of a {self.index_type!r} index")
        self.options[name] = int(value)

    def _params(self, selector: Any) -> Any:
        if self.index_type in ("ivf", "ivfpq"):
            return faiss.SearchParametersIVF(sel=selector, nprobe=int(self.options.get("nprobe", 1)))
        if self.index_type == "hnsw":
            ef = int(self.options.get("ef_search", 64))
            return faiss.SearchParametersHNSW(sel=selector, efSearch=ef)
        return faiss.SearchParameters(sel=selector)

    def describe(self) -> dict[str, Any]:
        return {
            "engine": "faiss-gpu" if self.use_gpu else "faiss-cpu",
            **({"gpu_refused": self._gpu_refusal} if self._gpu_refusal else {}),
            "faiss": faiss.__version__,
            "tombstones": len(self._dead),
            "factory": self.options["factory"] if self.index_type == "factory"
            else faiss_factory.named_type_factory(self.index_type, self.options),
            **{key: value for key, value in self.options.items() if key != "seed"},
        }

    def _new_hnsw(self) -> Any:
        inner = faiss.IndexHNSWFlat(self.dim, int(self.options.get("hnsw_m", 32)), faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = int(self.options.get("ef_construction", 80))
        inner.hnsw.efSearch = int(self.options.get("ef_search", 64))
        return faiss.IndexIDMap2(inner)

    def _on_gpu(self, filtered: bool, fetch: int) -> bool:
        """Whether a search of ``fetch`` results (``filtered`` by a selector) may use the GPU copy."""
        gpu = self._gpu_support
        return gpu is not None and fetch <= gpu.max_k and (not filtered or gpu.filtered_search)

    def _gpu_search(self, queries: np.ndarray, fetch: int, params: Any) -> tuple[np.ndarray, np.ndarray] | None:
        """Search the GPU copy (made on first use) under the GPU lock; None when the index stays on the CPU."""
        with self._gpu_lock:
            gpu = self._gpu_index()
            return None if gpu is None else gpu.search(queries, fetch, params=params)

    def _gpu_problem(self) -> str | None:
        if self.index_type != "ivfpq":
            return None
        pq = faiss.downcast_index(self._cpu).pq
        return ivfpq_gpu_problem(self._gpu_support, self.dim, int(pq.M), int(pq.nbits))

    def _gpu_index(self) -> Any:
        """The GPU copy, made now if missing; None (logged once) when this index cannot go to the GPU.
        The caller holds ``_gpu_lock``."""
        if self._gpu is not None or self._gpu_refusal is not None:
            return self._gpu
        gpu = self._gpu_support
        problem = self._gpu_problem()
        if problem is None:
            m = int(faiss.downcast_index(self._cpu).pq.M) if self.index_type == "ivfpq" else 0
            float16 = not gpu.cuvs and m in FLOAT16_TABLE_PQ_M  # fp16 lookup tables: larger m fit on the GPU
            try:
                self._gpu_resources, self._gpu = gpu.copy(self._cpu, int(self.options.get("gpu", 0)), float16)
            except RuntimeError as exc:  # faiss reports unsupported GPU settings as RuntimeError
                problem = f"faiss could not copy it to the GPU: {exc}"
        if problem is not None:
            self._gpu_refusal = problem
            _LOG.warning("%s index stays on the CPU: %s", self.index_type, problem)
        return self._gpu

    def _drop_dead(self, scores: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        dead = np.fromiter(self._dead, dtype=np.int64, count=len(self._dead))
        live = (labels >= 0) & ~np.isin(labels, dead)
        out_scores = np.full((labels.shape[0], k), -np.inf, np.float32)
        out_labels = np.full((labels.shape[0], k), -1, np.int64)
        for row in range(labels.shape[0]):
            keep = np.flatnonzero(live[row])[:k]
            out_scores[row, : keep.size] = scores[row, keep]
            out_labels[row, : keep.size] = labels[row, keep]
        return out_scores, out_labels
