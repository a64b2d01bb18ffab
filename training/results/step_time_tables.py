"""Markdown table of step-time results files (``python -m training.bench_step --out FILE`` writes one): the
median training step without and with gradient resetting, one row per file."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from training.results.tables import ResultsError, markdown_table

__all__ = ["step_time_table"]


def _row(result: dict[str, Any], source: str) -> list[str]:
    modes = result.get("modes") or {}
    if "distill" not in modes or "cdd" not in modes:
        raise ResultsError(f"{source}: no \"modes\" with distill and cdd medians; produce it with "
                           "`python -m training.bench_step` (make step-time)")
    height, width = result["input_size"]
    return [f"`{source}`", f"{result['memory_size']:,}", str(result["batch"]), f"{height}x{width}",
            result["device"], f"{1000 * modes['distill']['median_s']:.1f}", f"{1000 * modes['cdd']['median_s']:.1f}",
            f"{result['resetting_overhead_percent']:.1f}%", "met" if result["target_met"] else "**not met**"]


def step_time_table(results: Sequence[dict[str, Any]], sources: Sequence[str]) -> str:
    """One row per results file: memory entries per block, batch, input, device, median distillation step and
    CDD step (ms), the resetting overhead and whether it stays under 20%."""
    rows = [_row(result, source) for result, source in zip(results, sources, strict=True)]
    header = ["results file", "memory entries per block", "batch", "input", "device", "distill step (ms)",
              "CDD step (ms)", "resetting overhead", "target < 20%"]
    return "\n".join(markdown_table(header, rows, "lrrllrrrl"))
