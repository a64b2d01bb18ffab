"""Which search structure runs a gallery index where: FAISS on CPU, FAISS on GPU, or torch on CUDA.

`resolve_engine` turns a requested device ("cpu", "cuda", "auto") into one of "faiss-cpu", "faiss-gpu",
"torch-cuda"; `new_searcher` builds the matching (empty, possibly untrained) structure. faiss and torch
are imported here only when needed.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from serving.index.errors import GalleryIndexError

__all__ = ["DEVICES", "new_searcher", "resolve_engine"]

DEVICES = ("cpu", "cuda", "auto")
"""Requested index devices: "auto" = a GPU when faiss (or, for flat, torch) can use one, else CPU."""


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


def new_searcher(engine: str, index_type: str, dim: int, options: dict[str, Any]) -> Any:
    """An empty search structure (FaissSearcher or TorchExactSearcher) for ``engine``."""
    if engine == "torch-cuda":
        from serving.index.torch_gpu_searcher import TorchExactSearcher

        return TorchExactSearcher(dim, f"cuda:{int(options.get('gpu', 0))}")
    from serving.index.faiss_searcher import FaissSearcher

    return FaissSearcher(index_type, dim, options, use_gpu=engine == "faiss-gpu")
