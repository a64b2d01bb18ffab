"""The gallery index: vectors + ids + metadata (`GalleryIndex`), built from images by `build`.

- `gallery_backend`: the `GalleryBackend` interface the service uses and `open_gallery` (the store the
  index manifest names): `durable_gallery` (FAISS + `write_log`, the fsynced log replayed at start and
  folded into snapshots, its bytes in `log_frames`, checked and salvaged offline by `log_repair`;
  `index_lock`: one server per folder, cdd-index writers serialised) and
  `milvus_gallery` (Milvus via pymilvus: embedded milvus-lite or a server / cluster by URI).
- `gallery`: `GalleryIndex` (the in-memory FAISS gallery: add / upsert / remove / search / save / load,
  a read-write lock `rw_lock`, background rebuilds) and `Hit`; `table_search`: exact and structure
  searches over its table; `vector_checks`: input checks both stores share.
- `operating_point`: the nprobe / efSearch reaching recall@10 >= 0.95, stored by `store_build`.
- `item_table`: the rows (id, label, vector, metadata), the source of truth; metadata filters match here.
- `searcher`: the `Searcher` protocol and which one runs where; `faiss_searcher` (FAISS, CPU or GPU),
  `torch_gpu_searcher` (exact search on CUDA with torch); `exact_search`: brute force in numpy.
- `disk_format` (the files of a saved version), `atomic_dir` (crash-safe checksummed versions).
- `errors`: `GalleryIndexError` and its cases; `recall`: recall of an approximate index vs exact.
- `build`: embed image folders / lists / dataset layouts into an index; `store_build`: ``cdd-index build``
  per store; `__main__`: ``cdd-index``.

Importing this package does not import faiss or torch; the search structure is created on first use.
It quiets the ``faiss.loader`` logger to warnings: faiss logs at INFO every optional SIMD build it could not
load ("Could not load library with AVX2 support") before loading one that works, which is harmless.
"""

import logging

from serving.index.errors import (
    DimensionError,
    DuplicateIdError,
    GalleryIndexError,
    IndexBundleMismatch,
    IndexCorruptError,
    InvalidVectorsError,
    UnknownIdError,
)
from serving.index.gallery import DEVICES, INDEX_TYPES, GalleryIndex, Hit
from serving.index.recall import recall_at_k_vs_exact

logging.getLogger("faiss.loader").setLevel(logging.WARNING)

__all__ = [
    "DEVICES",
    "INDEX_TYPES",
    "DimensionError",
    "DuplicateIdError",
    "GalleryIndex",
    "GalleryIndexError",
    "Hit",
    "IndexBundleMismatch",
    "IndexCorruptError",
    "InvalidVectorsError",
    "UnknownIdError",
    "recall_at_k_vs_exact",
]
