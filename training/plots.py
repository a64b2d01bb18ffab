"""PNG plot of a run's training curves (loss terms, evaluation, kept channels)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cdd_common.atomic_file import atomic_path

__all__ = ["plot_history"]


def plot_history(history: list[dict[str, Any]], path: str | Path) -> None:
    """Write loss terms, mAP/rank-1 and (students) kept fraction per epoch to ``path`` atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for name in sorted({k for h in history for k in h.get("loss", {})}):
        axes[0].plot(epochs, [h["loss"].get(name, float("nan")) for h in history], label=name)
    axes[0].set(title="loss terms", xlabel="epoch", yscale="log")
    axes[0].legend(fontsize=8)
    evaluated = [h for h in history if h.get("eval")]
    for key in ("mAP", "rank1"):
        axes[1].plot([h["epoch"] for h in evaluated], [h["eval"][key] for h in evaluated], "o-", label=key)
    running = [h for h in evaluated if isinstance(h["eval"].get("running_stats"), dict)]
    if running:  # mid-run evaluations with recomputed BatchNorm statistics keep the running-statistics result
        axes[1].plot([h["epoch"] for h in running], [h["eval"]["running_stats"]["mAP"] for h in running], "x:",
                     label="mAP, running BatchNorm statistics")
    cross = [h for h in evaluated if isinstance(h["eval"].get("asymmetric"), dict)]
    if cross:  # students: student queries on the teacher's gallery, and the teacher's own mAP
        axes[1].plot([h["epoch"] for h in cross], [h["eval"]["asymmetric"]["mAP"] for h in cross], "s--",
                     label="mAP student query / teacher gallery")
        axes[1].plot([h["epoch"] for h in cross], [h["eval"]["teacher"]["mAP"] for h in cross], ":",
                     label="mAP teacher")
    axes[1].set(title="evaluation (%)", xlabel="epoch")
    axes[1].legend(fontsize=8)
    pruned = [h for h in history if h.get("pruning")]
    if pruned:
        axes[2].plot([h["epoch"] for h in pruned], [100 * h["pruning"]["kept_fraction"] for h in pruned],
                     label="kept channels %")
        axes[2].plot([h["epoch"] for h in pruned], [100 - h["pruning"]["flops_reduction"] for h in pruned],
                     label="FLOPs % of teacher")
        scheduled = [h for h in pruned if "scheduled_flops_fraction" in h["pruning"]]
        if scheduled:
            axes[2].plot([h["epoch"] for h in scheduled],
                         [100 * h["pruning"]["scheduled_flops_fraction"] for h in scheduled], ":",
                         label="scheduled FLOPs % (shrink schedule)")
        axes[2].plot([h["epoch"] for h in pruned],
                     [100 * h["pruning"]["reset_channels"] * h["pruning"]["kept_fraction"]
                      / max(h["pruning"]["kept_channels"], 1) for h in pruned], "--", label="reset channels %")
        axes[2].legend(fontsize=8)
    axes[2].set(title="capacity", xlabel="epoch")
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=80, format="png")
    finally:
        plt.close(fig)
