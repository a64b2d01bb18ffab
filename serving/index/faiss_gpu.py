"""What the installed faiss can do on a GPU, and the rules `FaissSearcher` follows before using one.

Read against the faiss GPU sources (faiss/gpu/GpuIndexIVFPQ.cu, impl/IVFPQ.cu, impl/FlatIndex.cu,
GpuIndex.cu, GpuCloner.cpp):
- Filters: the classic GPU indexes accept ``SearchParameters.sel`` and ignore it, so a filtered search there
  returns items outside the filter. Only cuVS-backed GPU indexes (faiss >= 1.14.2 built with NVIDIA cuVS,
  used on compute capability >= 7.0) apply the selector. Without them, filtered searches use the CPU index.
- IVF-PQ: the classic GPU index needs 8 bits per code, a number of sub-quantizers m in
  ``CLASSIC_PQ_M`` (56, 64 and 96 only with fp16 lookup tables) dividing the dimension, and
  ``m * 256 * (4 or 2 bytes)`` of shared memory per block; cuVS needs 4..8 bits with ``m * bits`` a multiple
  of 8. An index outside these rules stays on the CPU (with one log line) instead of failing every search.
- k: GPU k-selection stops at 2048 (1024 for old CUDA builds); larger searches use the CPU index.
- Threads: GPU indexes are not thread-safe, even for searches; `FaissSearcher` holds one lock around every
  GPU search, update and the lazy copy.
`FaissGpu.detect` reads the capability from faiss (and torch for the compute capability); tests build a
`FaissGpu` by hand to drive these decisions on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["CLASSIC_PQ_M", "FLOAT16_TABLE_PQ_M", "FaissGpu", "gpu_pq_choice", "ivfpq_gpu_problem"]

CLASSIC_PQ_M = (1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96)
"""Sub-quantizer counts the classic (non-cuVS) GPU IVF-PQ supports (IVFPQ::isSupportedPQCodeLength)."""
FLOAT16_TABLE_PQ_M = (56, 64, 96)
"""Of those, the ones that need fp16 lookup tables (GpuClonerOptions.useFloat16)."""
_FILTERS_SINCE = (1, 14, 2)
"""First faiss release whose cuVS indexes apply ``SearchParameters.sel`` (PR #4858)."""


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for part in str(text).split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


@dataclass(frozen=True)
class FaissGpu:
    """GPU support of the installed faiss: ``devices`` visible, ``cuvs`` (GPU indexes are cuVS-backed),
    ``filtered_search`` (GPU indexes apply ``SearchParameters.sel``), ``shared_memory_bytes`` per block,
    ``max_k`` (largest k a GPU search accepts)."""

    devices: int
    cuvs: bool = False
    filtered_search: bool = False
    shared_memory_bytes: int = 48 * 1024
    max_k: int = 1024

    @classmethod
    def detect(cls, device: int = 0) -> FaissGpu:
        """Read from faiss: GPU count, cuVS in ``faiss.get_compile_options()``, faiss version; the compute
        capability from torch (cuVS is used from 7.0 on; unknown counts as classic)."""
        import faiss

        count = int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
        if count == 0:
            return cls(devices=0)
        cuvs = "NVIDIA_CUVS" in faiss.get_compile_options() and _capability(device) >= (7, 0)
        shared = getattr(faiss, "getMaxSharedMemPerBlock", None)
        return cls(
            devices=count, cuvs=cuvs, filtered_search=cuvs and _version(faiss.__version__) >= _FILTERS_SINCE,
            shared_memory_bytes=int(shared(device)) if shared is not None else 48 * 1024,
        )

    def copy(self, index: Any, device: int, float16_tables: bool) -> tuple[Any, Any]:
        """(GPU resources, GPU copy of the CPU ``index`` on ``device``); keep the resources alive with it."""
        import faiss

        resources = faiss.StandardGpuResources()
        options = faiss.GpuClonerOptions()
        options.useFloat16 = bool(float16_tables)
        return resources, faiss.index_cpu_to_gpu(resources, int(device), index, options)


def _capability(device: int) -> tuple[int, int]:
    try:
        import torch

        if torch.cuda.is_available():
            return tuple(torch.cuda.get_device_capability(device))
    except Exception:  # a torch without CUDA support or a driver problem: unknown
        pass
    return (0, 0)


def ivfpq_gpu_problem(gpu: FaissGpu, dim: int, m: int, nbits: int) -> str | None:
    """None when an IVF-PQ index of ``dim`` with ``m`` sub-quantizers of ``nbits`` bits can be copied to
    ``gpu``, else why not (one sentence with the rule)."""
    if dim % m:
        return f"m={m} does not divide the dimension {dim}"
    if gpu.cuvs:
        if not 4 <= nbits <= 8 or (m * nbits) % 8:
            return f"cuVS IVF-PQ needs 4..8 bits with m * bits a multiple of 8 (m={m}, nbits={nbits})"
        return None
    if nbits != 8:
        return f"GPU IVF-PQ needs pq_nbits=8 (found {nbits})"
    if m not in CLASSIC_PQ_M:
        return f"GPU IVF-PQ supports m in {CLASSIC_PQ_M} (found m={m})"
    table = (2 if m in FLOAT16_TABLE_PQ_M else 4) * m * 2**nbits
    if table > gpu.shared_memory_bytes:
        return (f"GPU IVF-PQ lookup tables need {table} bytes of shared memory per block, the device has "
                f"{gpu.shared_memory_bytes}")
    return None


def gpu_pq_choice(gpu: FaissGpu, dim: int, n: int) -> tuple[int, int] | None:
    """Default (m, nbits) that ``gpu`` can search for ``dim`` and ``n`` training vectors: 8 bits (which
    needs n >= 256 for the 256 centroids per sub-quantizer) and the largest supported m <= dim / 4 that
    divides ``dim``; None when there is none."""
    if n < 256:
        return None
    for m in sorted(CLASSIC_PQ_M, reverse=True):
        if m <= max(1, dim // 4) and ivfpq_gpu_problem(gpu, dim, m, 8) is None:
            return m, 8
    return None
