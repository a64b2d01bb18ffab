"""Learning-rate schedule as a pure function of (fractional) epoch."""

from __future__ import annotations

import math

__all__ = ["lr_factor"]


def lr_factor(epoch: float, total_epochs: float, warmup_epochs: float, warmup_factor: float,
              flat_until: float, min_factor: float) -> float:
    """Multiplier of the base lr at ``epoch`` (0-based, fractional within an epoch).

    Linear warm-up from ``warmup_factor`` to 1 over ``warmup_epochs``, flat until ``flat_until``, then
    cosine from 1 down to ``min_factor`` at ``total_epochs``."""
    if warmup_epochs > 0 and epoch < warmup_epochs:
        return warmup_factor + (1.0 - warmup_factor) * epoch / warmup_epochs
    start = max(flat_until, warmup_epochs)
    if epoch < start:
        return 1.0
    span = max(total_epochs - start, 1e-12)
    progress = min(1.0, (epoch - start) / span)
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
