"""How gradually did the student shrink? The largest cut in one epoch and when the final size was reached.

Read from a run's per-epoch history (``pruning.flops_fraction``: the exported network's FLOPs over the
teacher's at the end of each epoch; the student starts at the teacher's size, 1.0). A student cut in one
step shows one large cut; a gradual one many small cuts ending well into the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["shrink_pace"]


def shrink_pace(history: Sequence[dict[str, Any]], epochs: int) -> dict[str, Any] | None:
    """{"largest_epoch_cut": percentage points of the teacher's FLOPs removed in one epoch, "at_epoch": that
    epoch, "final_size_epoch": the first epoch at the run's final FLOPs, "final_size_run_fraction": that
    epoch / ``epochs``}; None when the history records no pruning."""
    points = [(int(h["epoch"]), float(h["pruning"]["flops_fraction"])) for h in history
              if isinstance(h.get("pruning"), dict) and "flops_fraction" in h["pruning"]]
    if not points or epochs < 1:
        return None
    largest, at_epoch, previous = 0.0, None, 1.0
    for epoch, fraction in points:
        if previous - fraction > largest:
            largest, at_epoch = previous - fraction, epoch
        previous = fraction
    final = points[-1][1]
    final_epoch = next(epoch for epoch, fraction in points if fraction <= final)
    return {"largest_epoch_cut": round(100 * largest, 2), "at_epoch": at_epoch,
            "final_size_epoch": final_epoch, "final_size_run_fraction": round(final_epoch / epochs, 3)}
