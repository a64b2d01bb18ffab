"""The latency budget of a CDD run: a hard cap on the exported network's estimated latency on one runtime.

:class:`LatencyBudget` prices a reset set as the exported network will be built (kept counts rounded up
to ``round_to``, `training.budget.rounded_kept`) with the run's measured per-block latency table
(`training.latency_table`), and plugs into the same admission as the FLOPs budget
(`training.budget.fill_budgets`). :func:`latency_report` is the final report's latency part.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from training.budget import rounded_kept
from training.latency_table import LatencyTable

__all__ = ["LatencyBudget", "latency_report"]

log = logging.getLogger("training")


def _where(table: LatencyTable) -> str:
    k = table.key
    return f"{k['runtime']} {table.runtime_version}, batch {k['batch']}, {k['threads']} thread(s)"


@dataclass(frozen=True)
class LatencyBudget:
    """At most ``limit_ms`` estimated milliseconds per call (of the table's batch) for the exported network."""

    table: LatencyTable
    limit_ms: float
    round_to: int = 1

    @classmethod
    def for_table(cls, table: LatencyTable, limit_ms: float, round_to: int = 1) -> LatencyBudget:
        """The budget, refused (ValueError naming the measured values and the fix) when it cannot be met or
        is not a budget at all."""
        if limit_ms <= 0:
            raise ValueError(f"cdd.latency_budget_ms must be > 0 for a latency budget, found {limit_ms}")
        floor = table.floor_ms()
        if limit_ms < floor:
            raise ValueError(
                f"cdd.latency_budget_ms = {limit_ms:g} ms is below the lowest latency this network can reach on "
                f"this machine: {floor:.3f} ms ({_where(table)}), of which the fixed part (input + stem "
                f"{table.fixed_ms['stem']:.3f} ms, head {table.fixed_ms['head']:.3f} ms) is "
                f"{table.fixed_total_ms:.3f} ms and every block at its smallest width the rest; raise the budget "
                f"to at least {floor:.3f} ms, or lower cdd.latency_batch, the input size or model.width")
        full = table.full_ms()
        if limit_ms >= full:
            log.warning("cdd.latency_budget_ms = %g ms is at or above the full-width network's estimate %.3f ms "
                        "(%s): the budget is met before any channel is reset, so gradient resetting stops at "
                        "once; lower it to prune", limit_ms, full, _where(table))
        return cls(table, limit_ms, max(1, round_to))

    def kept(self, resets: Sequence[int]) -> list[int]:
        return [rounded_kept(b.width, r, self.round_to) for b, r in zip(self.table.blocks, resets, strict=True)]

    def estimate_ms(self, masks: Sequence[torch.Tensor]) -> float:
        """Estimated latency of the exported network when the channels in ``masks`` are pruned."""
        return self.table.estimate_ms(self.kept([int(m.sum()) for m in masks]))

    def met_resets(self, resets: Sequence[int]) -> bool:
        return self.table.estimate_ms(self.kept(resets)) <= self.limit_ms

    def describe_resets(self, resets: Sequence[int]) -> str:
        ms = self.table.estimate_ms(self.kept(resets))
        state = "met" if ms <= self.limit_ms else "NOT met"
        return (f"latency budget {state}: exported network estimated {ms:.3f} ms (budget {self.limit_ms:g} ms; "
                f"{_where(self.table)})")


def latency_report(table: LatencyTable, kept: Sequence[int], limit_ms: float, round_to: int,
                   growth: str) -> dict[str, Any]:
    """The latency part of a run's compression report for the exported kept counts ``kept``; logs a loud
    warning when the estimate is more than one rounding step away from ``limit_ms``."""
    ms = table.estimate_ms(kept)
    step = table.rounding_step_ms(round_to)
    report = {"latency_budget_ms": limit_ms, "estimated_latency_ms": round(ms, 4),
              "latency_runtime": table.key["runtime"], "latency_batch": table.key["batch"],
              "latency_threads": table.key["threads"], "latency_met": ms <= limit_ms,
              "latency_within_one_rounding_step": abs(ms - limit_ms) <= step,
              "latency_rounding_step_ms": round(step, 4),
              "full_width_estimated_latency_ms": round(table.full_ms(), 4)}
    if not report["latency_within_one_rounding_step"]:
        log.warning("!!! latency budget MISSED: the exported network is estimated at %.3f ms (%s), the budget is "
                    "%g ms, more than one rounding step (%.3f ms) away. %s", ms, _where(table), limit_ms, step,
                    growth)
    return report
