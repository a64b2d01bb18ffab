"""Input checks shared by the gallery backends (FAISS and Milvus): vectors, queries, ids, metadata, k.

Each returns the cleaned value or raises a `serving.index.errors` error naming what was expected and found.
"""

from __future__ import annotations

import json
import operator
from collections import Counter
from typing import Any

import numpy as np

from serving.index.errors import DimensionError, DuplicateIdError, GalleryIndexError, InvalidVectorsError

__all__ = ["NORM_TOLERANCE", "check_items", "check_k", "check_queries", "check_vectors"]

NORM_TOLERANCE = 1e-3
"""Largest accepted | ||v|| - 1 | for stored vectors (they must be unit-norm for cosine = inner product)."""


def check_vectors(vectors: Any, n: int, dim: int) -> np.ndarray:
    """``vectors`` as C-contiguous float32 (n, dim) unit-norm rows; DimensionError / InvalidVectorsError."""
    array = np.asarray(vectors)
    if array.ndim != 2 or array.shape[1] != dim:
        raise DimensionError(f"vectors must have shape (N, {dim}), found {tuple(array.shape)}")
    if array.shape[0] != n:
        raise InvalidVectorsError(f"got {n} id(s) but {array.shape[0]} vector(s); they must line up")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise InvalidVectorsError("vectors contain NaN or infinity; check the engine output")
    norms = np.linalg.norm(array, axis=1)
    if n and np.abs(norms - 1.0).max() > NORM_TOLERANCE:
        raise InvalidVectorsError(
            f"vectors must be L2-normalised (norm 1 +- {NORM_TOLERANCE}), found norms in "
            f"[{norms.min():.4g}, {norms.max():.4g}]; divide each row by its norm"
        )
    return array


def check_queries(queries: Any, dim: int) -> np.ndarray:
    """``queries`` as C-contiguous float32 (Q, dim); DimensionError / InvalidVectorsError."""
    array = np.asarray(queries)
    if array.ndim != 2 or array.shape[1] != dim:
        raise DimensionError(
            f"queries must have shape (Q, {dim}), found {tuple(array.shape)}; "
            "use queries.reshape(1, -1) for a single query"
        )
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise InvalidVectorsError("queries contain NaN or infinity")
    return array


def check_k(k: Any) -> int:
    """``k`` as a positive int; GalleryIndexError otherwise."""
    try:
        value = operator.index(k)
    except TypeError:
        value = 0
    if value < 1:
        raise GalleryIndexError(f"k must be a positive integer, found {k!r}")
    return value


def check_items(ids: list[Any], metadata: list[dict[str, Any]]) -> None:
    """Ids are unique non-empty strings, one JSON-serialisable metadata dict each."""
    if len(metadata) != len(ids):
        raise InvalidVectorsError(f"got {len(ids)} id(s) but {len(metadata)} metadata dict(s)")
    bad = [item_id for item_id in ids if not isinstance(item_id, str) or not item_id]
    if bad:
        raise GalleryIndexError(f"ids must be non-empty strings, found {bad[:5]}")
    repeated = [item_id for item_id, count in Counter(ids).items() if count > 1]
    if repeated:
        raise DuplicateIdError(f"ids repeat within one add call, e.g. {repeated[:5]}; nothing was added")
    for item_id, meta in zip(ids, metadata, strict=True):
        try:
            json.dumps(meta)
        except (TypeError, ValueError) as exc:
            raise GalleryIndexError(f"metadata of {item_id!r} is not JSON-serialisable: {exc}") from exc
