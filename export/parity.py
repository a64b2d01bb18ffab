"""Parity gates: run a reference and a candidate on the same real images and refuse to go on if they differ.

Both outputs are L2-normalised per row before comparing (what retrieval uses), so tolerances do not depend
on the embedding's scale. A gate runs at several batch sizes (1, an odd one, the maximum) because exported
graphs can be right at one batch size and wrong at another.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from export.config import Tolerance
from export.errors import ExportError

__all__ = ["Parity", "ParityGateError", "compare", "run_gate", "take_batch"]

Embedder = Callable[[np.ndarray], np.ndarray]
"""uint8 images (N, H, W, 3) -> embeddings (N, D)."""


class ParityGateError(ExportError):
    """A candidate's embeddings differ from the reference's by more than the gate's tolerance."""

    def __init__(self, gate: str, message: str) -> None:
        super().__init__(message)
        self.gate = gate


@dataclass(frozen=True)
class Parity:
    """``max_abs_err``: largest element-wise |a - b| of the row-normalised embeddings; ``min_cosine``:
    smallest cosine between matching rows. NaN when either side produced a non-finite value."""

    max_abs_err: float
    min_cosine: float

    def within(self, tolerance: Tolerance) -> bool:
        """True when both numbers are within ``tolerance`` (NaN never is)."""
        return bool(self.max_abs_err <= tolerance.max_abs_err and self.min_cosine >= tolerance.min_cosine)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def compare(reference: np.ndarray, candidate: np.ndarray) -> Parity:
    """Compare two (N, D) embedding arrays row by row. Raises ValueError when the shapes differ."""
    reference, candidate = np.asarray(reference), np.asarray(candidate)
    if reference.shape != candidate.shape or reference.ndim != 2:
        raise ValueError(f"embeddings must both be (N, D) with equal shapes, found {reference.shape} (reference) "
                         f"and {candidate.shape} (candidate)")
    if not (np.isfinite(reference).all() and np.isfinite(candidate).all()):
        return Parity(float("nan"), float("nan"))
    a, b = _unit_rows(reference), _unit_rows(candidate)
    return Parity(float(np.abs(a - b).max(initial=0.0)), float((a * b).sum(axis=1).min(initial=1.0)))


def take_batch(images: np.ndarray, size: int) -> np.ndarray:
    """The first ``size`` images of (M, H, W, 3) ``images``, cycling through them when ``size`` > M."""
    if len(images) == 0:
        raise ValueError("no images to take a batch from")
    return np.ascontiguousarray(images[np.arange(size) % len(images)])


def run_gate(name: str, reference: Embedder, candidate: Embedder, images: np.ndarray,
             batch_sizes: Sequence[int], tolerance: Tolerance, setting: str | None = None) -> dict[str, Any]:
    """Run both embedders on ``take_batch(images, b)`` for every b and compare.

    Returns {"max_abs_err", "min_cosine" (worst over batches), "batch_sizes", "images", "tolerance"}.
    Raises ParityGateError naming the gate, the measured numbers per batch size and the tolerance (with its
    config key ``setting``, default ``gates.<name>``)."""
    measured: dict[int, Parity] = {}
    for size in batch_sizes:
        batch = take_batch(images, size)
        ref, cand = reference(batch), candidate(batch)
        try:
            measured[size] = compare(ref, cand)
        except ValueError as exc:
            raise ParityGateError(name, f"parity gate {name!r} at batch {size}: {exc}") from exc
    worst = Parity(max(p.max_abs_err for p in measured.values()), min(p.min_cosine for p in measured.values()))
    if any(not p.within(tolerance) for p in measured.values()):
        detail = ", ".join(f"batch {b}: max_abs_err {p.max_abs_err:.3g}, min_cosine {p.min_cosine:.7f}"
                           for b, p in measured.items())
        key = setting or f"gates.{name}"
        raise ParityGateError(name, f"parity gate {name!r} failed: {detail}; tolerance {key}.max_abs_err "
                                    f"{tolerance.max_abs_err:.3g}, {key}.min_cosine {tolerance.min_cosine:.7f}. "
                                    "No bundle was written.")
    return {
        "max_abs_err": worst.max_abs_err,
        "min_cosine": worst.min_cosine,
        "batch_sizes": list(batch_sizes),
        "images": int(len(images)),
        "tolerance": {"max_abs_err": tolerance.max_abs_err, "min_cosine": tolerance.min_cosine},
    }
