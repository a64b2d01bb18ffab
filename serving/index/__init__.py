"""The gallery index: vectors + ids + metadata (`GalleryIndex`), built from images by `build`.

- `gallery`: `GalleryIndex` (add / remove / search / save / load, one lock) and `Hit`.
- `item_table`: the rows (id, label, vector, metadata), the source of truth; metadata filters match here.
- `searcher`: the `Searcher` protocol and which one runs where; `faiss_searcher` (FAISS, CPU or GPU),
  `torch_gpu_searcher` (exact search on CUDA with torch); `exact_search`: brute force in numpy.
- `disk_format` (the files of a saved version), `atomic_dir` (crash-safe checksummed versions).
- `errors`: `GalleryIndexError` and its cases; `recall`: recall of an approximate index vs exact.
- `build`: embed image folders / lists / dataset layouts into an index; `__main__`: ``cdd-index``.

Importing this package does not import faiss or torch; the search structure is created on first use.
"""

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
