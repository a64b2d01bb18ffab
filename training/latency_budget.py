"""The latency budget of a CDD run: a hard cap on the exported network's estimated latency on one runtime.

:class:`LatencyBudget` prices a reset set as the exported network will be built (kept counts rounded up
to ``round_to``, `training.budget.rounded_kept`) with the run's measured per-block latency table
(`training.latency_table`), and plugs into the same admission as the FLOPs budget
(`training.budget.fill_budgets`). :func:`latency_report` is the final report's latency part, and
:func:`warn_if_latency_missed` says loudly when the budget was missed. With a FLOPs budget too, growth stops
when both are met, so the budget that binds ends within a rounding step of its limit and the other ends
below its own: a miss is an estimate above the budget by more than a step, or below it by more than a step
when the FLOPs budget (if any) did not bind either.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from training.budget import rounded_kept
from training.latency_table import LatencyTable
from training.shrink_schedule import ShrinkSchedule

__all__ = ["LatencyBudget", "latency_report", "warn_if_latency_missed"]

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

    def scheduled(self, schedule: ShrinkSchedule, run_fraction: float) -> LatencyBudget:
        """This budget with its limit where ``schedule`` puts it at ``run_fraction`` (between the full-width
        estimate and ``limit_ms``)."""
        return replace(self, limit_ms=schedule.allowed(self.table.full_ms(), self.limit_ms, run_fraction))

    def describe_resets(self, resets: Sequence[int]) -> str:
        ms = self.table.estimate_ms(self.kept(resets))
        state = "met" if ms <= self.limit_ms else "NOT met"
        return (f"latency budget {state}: exported network estimated {ms:.3f} ms (budget {self.limit_ms:g} ms; "
                f"{_where(self.table)})")


def latency_report(table: LatencyTable, kept: Sequence[int], limit_ms: float, round_to: int) -> dict[str, Any]:
    """The latency part of a run's compression report for the exported kept counts ``kept``."""
    ms = table.estimate_ms(kept)
    step = table.rounding_step_ms(round_to)
    return {"latency_budget_ms": limit_ms, "estimated_latency_ms": round(ms, 4),
            "latency_runtime": table.key["runtime"], "latency_batch": table.key["batch"],
            "latency_threads": table.key["threads"], "latency_met": ms <= limit_ms,
            "latency_within_one_rounding_step": abs(ms - limit_ms) <= step,
            "latency_rounding_step_ms": round(step, 4),
            "full_width_estimated_latency_ms": round(table.full_ms(), 4)}


def warn_if_latency_missed(report: dict[str, Any], flops_below: bool | None, growth: str) -> bool:
    """Log a loud warning (and return True) when the latency budget was missed: the estimate is above it by
    more than one rounding step, or below it by more than one step while no FLOPs budget explains that
    (``flops_below`` None: no FLOPs budget; True: the FLOPs budget also ended more than a step below its
    limit, so neither budget bound the network)."""
    ms, limit = report["estimated_latency_ms"], report["latency_budget_ms"]
    step = report["latency_rounding_step_ms"]
    missed = ms > limit + step or (ms < limit - step and flops_below is not False)
    if missed:
        log.warning("!!! latency budget MISSED: the exported network is estimated at %.3f ms (%s, batch %d, "
                    "%d thread(s)), the budget is %g ms, more than one rounding step (%.3f ms) away. %s", ms,
                    report["latency_runtime"], report["latency_batch"], report["latency_threads"], limit, step,
                    growth)
    return missed
