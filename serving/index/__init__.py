"""The gallery index: vectors + ids + metadata (`GalleryIndex`), built from images by `build`.

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
