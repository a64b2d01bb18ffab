"""The one small interface every inference backend implements (`Engine`), and `BackendUnavailable`.

`Engine` owns the mechanics shared by all backends: input checks (dtype, shape, against the manifest),
splitting a large input into chunks of at most ``manifest.batch.max`` images, padding a chunk up to
``manifest.batch.min``, and output checks. A backend overrides one hook, `_run`, and `describe`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from serving.bundle import BundleError, Manifest

__all__ = ["BackendUnavailable", "Engine"]


class BackendUnavailable(RuntimeError):
    """A backend cannot run here; the message says why and what to install or re-export."""


class Engine(ABC):
    """Images -> embeddings with one backend.

    ``name`` is the backend name ("tensorrt", "onnxruntime-cuda", "onnxruntime-cpu", "torch"), ``device``
    is "cpu" or "cuda[:i]". Engines are safe to call from several threads (each backend serialises or
    supports concurrent runs)."""

    name: str = "engine"
    device: str = "cpu"

    def __init__(self, manifest: Manifest) -> None:
        spec = manifest.input
        if spec.dtype != "uint8" or spec.layout != "NHWC" or manifest.preprocess.normalization != "in_graph":
            raise BundleError(
                f"bundle {manifest.name!r} takes {spec.dtype} {spec.layout} input with "
                f"{manifest.preprocess.normalization!r} normalisation; engines run uint8 NHWC graphs with "
                "normalisation in the graph; re-export the bundle with cdd-export"
            )
        self.manifest = manifest

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(height, width, channels) of one image, from the manifest."""
        spec = self.manifest.input
        return (spec.height, spec.width, spec.channels)

    @property
    def dim(self) -> int:
        """Embedding dimension D."""
        return self.manifest.output.dim

    @property
    def max_batch(self) -> int:
        """Largest batch one `_run` call receives (``manifest.batch.max``)."""
        return self.manifest.batch.max

    def embed(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) RGB images at the manifest's input size -> float32 (N, D), unit L2 rows.

        Any N >= 0 is accepted: inputs above ``max_batch`` run in chunks. Raises ValueError naming the
        expected and found dtype/shape."""
        self._check_input(images)
        n = images.shape[0]
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        step = self.max_batch
        parts = [self._run_chunk(images[start : start + step]) for start in range(0, n, step)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)

    @abstractmethod
    def _run(self, batch: np.ndarray) -> np.ndarray:
        """Run the graph on a contiguous uint8 batch within the manifest's batch range."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """JSON-serialisable facts: backend, device, providers or GPU, library versions, model file."""

    def _run_chunk(self, chunk: np.ndarray) -> np.ndarray:
        n = chunk.shape[0]
        low = self.manifest.batch.min
        if n < low:
            pad = np.zeros((low - n, *chunk.shape[1:]), dtype=chunk.dtype)
            chunk = np.concatenate([chunk, pad], axis=0)
        out = np.asarray(self._run(np.ascontiguousarray(chunk)))
        if out.ndim != 2 or out.shape[0] != chunk.shape[0] or out.shape[1] != self.dim:
            raise RuntimeError(
                f"{self.name} backend returned shape {tuple(out.shape)}, manifest expects "
                f"({chunk.shape[0]}, {self.dim}); the model does not match its manifest, re-export the bundle"
            )
        return out[:n].astype(np.float32, copy=False)

    def _check_input(self, images: Any) -> None:
        expected = (self.input_shape[0], self.input_shape[1], self.input_shape[2])
        if not isinstance(images, np.ndarray):
            raise ValueError(
                f"{self.name}: images must be a numpy uint8 array (N, {expected[0]}, {expected[1]}, "
                f"{expected[2]}), found {type(images).__name__}"
            )
        if images.dtype != np.uint8:
            raise ValueError(
                f"{self.name}: images must have dtype uint8 (0..255 RGB), found {images.dtype}; "
                "pass decoded pixels, not normalised floats (normalisation is inside the graph)"
            )
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"{self.name}: images must have shape (N, {expected[0]}, {expected[1]}, {expected[2]}) "
                f"(NHWC at the manifest's input size), found {tuple(images.shape)}; resize with "
                "serving.preprocess.to_model_input"
            )
