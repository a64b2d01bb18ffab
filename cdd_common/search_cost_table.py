"""The markdown table of a ``cdd-bench search-cost`` result, in one copy: the benchmark writes it beside its
JSON (serving) and the docs render it from the committed JSON (training.results)."""

from __future__ import annotations

from typing import Any

__all__ = ["SEARCH_COST_STEPS", "search_cost_markdown"]

SEARCH_COST_STEPS = ("decode", "embed", "search", "reply")
"""The batch worker's steps for a Search, in the order it runs them (`serving.benchmarks.search_cost`)."""


def search_cost_markdown(result: dict[str, Any]) -> str:
    """Rows: the steps and their total; columns: batch sizes (by number); cells: median CPU us per request
    (min-max over the rounds)."""
    sizes = sorted(result["batches"], key=int)
    rows = []
    for step in SEARCH_COST_STEPS:
        cells = [result["batches"][s]["steps"][step] for s in sizes]
        rows.append([step, *(f"{c['median_us']:.1f} ({c['min_us']:.1f}-{c['max_us']:.1f})" for c in cells)])
    rows.append(["total (sum of medians)", *(f"{result['batches'][s]['total_median_us']:.1f}" for s in sizes)])
    header = ["step", *(f"batch {s}: CPU us per request, median (min-max)" for s in sizes)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])
