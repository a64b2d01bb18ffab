"""`TorchExactSearcher`: exact inner-product search on a CUDA GPU with torch (matmul + topk).

Used for the "flat" index type when a GPU is present but faiss has no GPU support. Vectors live in a
growable CUDA buffer; removal compacts it. float32 throughout (TF32 matmul is left at torch's default,
which is off for matmul), so scores match the CPU flat index within float error.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["TorchExactSearcher"]


class TorchExactSearcher:
    """A `serving.index.searcher.Searcher` holding every vector in CUDA memory; exact, never needs training."""

    index_type = "flat"
    is_trained = True

    def __init__(self, dim: int, device: str = "cuda") -> None:
        self.dim = dim
        self.device = torch.device(device)
        self._vectors = torch.zeros((0, dim), dtype=torch.float32, device=self.device)
        self._labels = torch.zeros(0, dtype=torch.int64, device=self.device)
        self._n = 0

    @property
    def ntotal(self) -> int:
        return self._n

    def train(self, vectors: np.ndarray) -> None:
        """Nothing to train for exact search."""

    def add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        n = vectors.shape[0]
        need = self._n + n
        if need > self._vectors.shape[0]:
            capacity = max(need, 2 * self._vectors.shape[0], 1024)
            grown = torch.zeros((capacity, self.dim), dtype=torch.float32, device=self.device)
            grown_labels = torch.zeros(capacity, dtype=torch.int64, device=self.device)
            grown[: self._n] = self._vectors[: self._n]
            grown_labels[: self._n] = self._labels[: self._n]
            self._vectors, self._labels = grown, grown_labels
        self._vectors[self._n : need] = torch.from_numpy(np.ascontiguousarray(vectors, np.float32)).to(
            self.device
        )
        self._labels[self._n : need] = torch.from_numpy(np.ascontiguousarray(labels, np.int64)).to(
            self.device
        )
        self._n = need

    def remove(self, labels: np.ndarray) -> None:
        gone = torch.from_numpy(np.ascontiguousarray(labels, np.int64)).to(self.device)
        keep = ~torch.isin(self._labels[: self._n], gone)
        kept_vectors = self._vectors[: self._n][keep]
        kept_labels = self._labels[: self._n][keep]
        self._n = int(kept_labels.shape[0])
        self._vectors[: self._n] = kept_vectors
        self._labels[: self._n] = kept_labels

    @torch.inference_mode()
    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores (Q, k) float32, labels (Q, k) int64); slots beyond the size have label -1.
        With ``allowed`` (int64 labels) the others score -inf and are dropped."""
        q = queries.shape[0]
        scores = np.full((q, max(k, 0)), -np.inf, np.float32)
        labels = np.full((q, max(k, 0)), -1, np.int64)
        take = min(k, self._n)
        if take <= 0:
            return scores, labels
        query = torch.from_numpy(np.ascontiguousarray(queries, np.float32)).to(self.device)
        sims = query @ self._vectors[: self._n].T
        if allowed is not None:
            wanted = torch.from_numpy(np.ascontiguousarray(allowed, np.int64)).to(self.device)
            sims[:, ~torch.isin(self._labels[: self._n], wanted)] = -torch.inf
        top_scores, top_rows = torch.topk(sims, take, dim=1)
        found = self._labels[top_rows].cpu().numpy()
        top = top_scores.cpu().numpy()
        found[~np.isfinite(top)] = -1
        scores[:, :take] = top
        labels[:, :take] = found
        return scores, labels

    @property
    def needs_rebuild(self) -> bool:
        """Never: removal compacts the buffer at once."""
        return False

    @property
    def tombstones(self) -> list[int]:
        return []

    def set_search_param(self, name: str, value: int) -> None:
        raise ValueError(f"exact torch search has no {name!r} parameter")

    def serialize(self) -> bytes | None:
        """None: an exact index is rebuilt from the stored vectors."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"engine": "torch-cuda", "torch": torch.__version__, "device": str(self.device)}
