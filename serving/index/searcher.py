"""The search structure behind a gallery index: its interface (`Searcher`) and which one runs where.

`Searcher` is what `GalleryIndex` calls; `FaissSearcher` (FAISS on CPU or GPU, ``faiss_searcher.py``) and
`TorchExactSearcher` (torch on CUDA, ``torch_gpu_searcher.py``) implement it. `resolve_engine` turns a
requested device ("cpu", "cuda", "auto") into one of "faiss-cpu", "faiss-gpu", "torch-cuda";
`new_searcher` builds the matching (empty, possibly untrained) structure. faiss and torch are imported
here only when needed.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Protocol

import numpy as np

from serving.index.errors import GalleryIndexError

__all__ = ["DEVICES", "Searcher", "new_searcher", "resolve_engine"]

DEVICES = ("cpu", "cuda", "auto")
"""Requested index devices: "auto" = a GPU when faiss (or, for flat, torch) can use one, else CPU."""


class Searcher(Protocol):
    """Vectors under int64 labels (the item table's), searched by inner product. Searches may run
    concurrently with each other; the gallery index's write lock keeps changes apart from them.
    Vectors are float32 (N, dim) unit-norm rows; labels int64 (N,)."""

    @property
    def is_trained(self) -> bool:
        """False for an ivf / ivfpq structure until `train`; True for the others from the start."""

    @property
    def ntotal(self) -> int:
        """Live items (removed ones excluded)."""

    def train(self, vectors: np.ndarray) -> None:
        """Build and train on ``vectors`` (N >= 1 rows); a no-op for structures that need no training."""

    def add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        """Add rows under their labels (the structure must be trained)."""

    def remove(self, labels: np.ndarray) -> None:
        """Remove the items with these labels."""

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` per query: (scores (Q, k) float32, labels (Q, k) int64), best first; empty slots -1.
        ``allowed`` (int64 labels) restricts the search to those items (a metadata filter)."""

    @property
    def needs_rebuild(self) -> bool:
        """True when removals left enough dead entries that a rebuild (in the background) pays off."""

    @property
    def tombstones(self) -> list[int]:
        """Removed labels still inside the structure (saved with it)."""

    def set_search_param(self, name: str, value: int) -> None:
        """Set an operating point (``nprobe`` / ``ef_search``); ValueError when the structure has none."""

    def serialize(self) -> bytes | None:
        """The structure as bytes to save with the index, or None when it is rebuilt from the vectors."""

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable facts: engine name, library version, tuning parameters."""


def _torch_cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def resolve_engine(device: str, index_type: str) -> str:
    """'faiss-cpu', 'faiss-gpu' or 'torch-cuda' for a requested device."""
    if device not in DEVICES:
        raise GalleryIndexError(f"device must be one of {DEVICES}, found {device!r}")
    if device == "cpu":
        return "faiss-cpu"
    from serving.index.faiss_searcher import faiss_gpu_count

    if faiss_gpu_count() > 0 and index_type != "hnsw":
        return "faiss-gpu"
    if index_type == "flat" and _torch_cuda_available():
        return "torch-cuda"
    if device == "cuda":
        raise GalleryIndexError(
            f"device='cuda' for a {index_type!r} index needs faiss with GPU support (conda install -c "
            "pytorch faiss-gpu) or, for 'flat', torch with CUDA; neither is available here; use device='cpu'"
        )
    return "faiss-cpu"


def new_searcher(engine: str, index_type: str, dim: int, options: dict[str, Any]) -> Searcher:
    """An empty search structure (FaissSearcher or TorchExactSearcher) for ``engine``."""
    if engine == "torch-cuda":
        from serving.index.torch_gpu_searcher import TorchExactSearcher

        return TorchExactSearcher(dim, f"cuda:{int(options.get('gpu', 0))}")
    from serving.index.faiss_searcher import FaissSearcher

    return FaissSearcher(index_type, dim, options, use_gpu=engine == "faiss-gpu")
