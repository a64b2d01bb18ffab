"""Did the student collapse while it shrank? Each evaluation after resetting starts, against the best before it.

A gradually compressed student keeps most of its accuracy at every point; a student cut in one step
drops to near zero and recovers. :func:`lowest_eval_ratio` reads a run's per-epoch history and says how
low the ratio ``mAP / best mAP before it`` got after resetting started (the teacher's mAP counts as the
first evaluation). Mid-run evaluations measure the network with BatchNorm statistics recomputed for its
current weights and keep the running-statistics result beside it (`run.eval_batchnorm`);
:func:`running_statistics_history` gives the history as the running statistics saw it, so a run can
report both ratios.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["lowest_eval_ratio", "running_statistics_history"]


def lowest_eval_ratio(history: Sequence[dict[str, Any]], grg_start_epoch: float, teacher_map: float | None,
                      final: tuple[int, float] | None = None) -> dict[str, Any]:
    """{"evaluations_after_reset_start": n, "lowest_ratio": r, "at_epoch": e} over the evaluations of
    ``history`` (entries with ``epoch`` and ``eval.mAP``) plus ``final`` (epoch, mAP); r is None when no
    evaluation follows the start of resetting or nothing was evaluated before it."""
    points = [(int(h["epoch"]), float(h["eval"]["mAP"])) for h in history if h.get("eval")]
    if final is not None:
        points.append((int(final[0]), float(final[1])))
    best = teacher_map
    lowest: tuple[float, int] | None = None
    after = 0
    for epoch, value in points:
        if epoch > grg_start_epoch:
            after += 1
            if best is not None and best > 0:
                ratio = value / best
                if lowest is None or ratio < lowest[0]:
                    lowest = (ratio, epoch)
        best = value if best is None else max(best, value)
    return {"evaluations_after_reset_start": after,
            "lowest_ratio": None if lowest is None else round(lowest[0], 4),
            "at_epoch": None if lowest is None else lowest[1]}


def running_statistics_history(history: Sequence[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """``history`` with each evaluation's mAP replaced by its running-statistics result (``eval.running_stats``);
    None when no evaluation kept one (``run.eval_batchnorm = "running"``, or nothing evaluated mid-run)."""
    if not any("running_stats" in (h.get("eval") or {}) for h in history):
        return None
    return [{**h, "eval": {"mAP": h["eval"]["running_stats"]["mAP"]}} if h.get("eval") else h for h in history]
