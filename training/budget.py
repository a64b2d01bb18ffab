"""The hard budgets of a CDD run: what the exported network may cost, and how the reset set grows into them.

The exported network keeps, per block, the channels outside the reset set, rounded UP to a multiple of
``round_to`` (never more than the full width, never fewer than one). :class:`FlopsBudget` prices a reset set
exactly that way, so "the budget is met" means the exported network costs at most ``limit`` MACs; the
latency budget (`training.latency_budget`) prices the same kept counts with a measured latency table.
:func:`fill_budgets` grows a reset set by a step's proposal: all of it while some budget is not reached
with it, else only the proposal's channels of smallest contribution, one at a time, until every budget is
met (or, while a shrink schedule paces growth, until the next channel would take the network below every
scheduled limit: the reset set never runs ahead of the schedule). Every budget can be ``scheduled``: the same
budget with its limit moved along a `training.shrink_schedule.ShrinkSchedule`. :class:`Budgets` applies
several budgets at once (growth stops when all are met).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import torch

from training.arch_spec import ArchSpec
from training.cost import FlopsModel
from training.shrink_schedule import ShrinkSchedule

__all__ = ["Budget", "Budgets", "FlopsBudget", "fill_budgets", "rounded_kept"]


def rounded_kept(width: int, reset: int, round_to: int) -> int:
    """Channels the exported block keeps when ``reset`` of its ``width`` are reset: at least one, rounded up
    to a multiple of ``round_to``, capped at ``width``."""
    kept = max(1, width - reset)
    if round_to > 1:
        kept = min(width, -(-kept // round_to) * round_to)
    return kept


class Budget(Protocol):
    """A cap on the exported network, priced from per-block reset counts (rounding applied by the budget)."""

    def met_resets(self, resets: Sequence[int]) -> bool: ...

    def describe_resets(self, resets: Sequence[int]) -> str: ...

    def scheduled(self, schedule: ShrinkSchedule, run_fraction: float) -> Budget: ...


def _resets(masks: Sequence[torch.Tensor]) -> list[int]:
    return [int(m.sum()) for m in masks]


def fill_budgets(budgets: Sequence[Budget], masks: Sequence[torch.Tensor], proposal: Sequence[torch.Tensor],
                 scores: Sequence[torch.Tensor], cross: bool = True) -> list[torch.Tensor]:
    """``masks`` grown by ``proposal``: entirely if some budget is still not met with it, else channel by
    channel in order of increasing ``scores`` (the channel's contribution) until every budget is met.
    ``cross`` False (a scheduled, intermediate limit) stops one channel earlier: the channel that would meet
    every budget is not admitted, so the network never goes below the schedule."""
    merged = [m | p for m, p in zip(masks, proposal, strict=True)]
    if not all(b.met_resets(_resets(merged)) for b in budgets):
        return merged
    grown = [m.clone() for m in masks]
    resets = _resets(grown)
    candidates = []
    for b, (m, p, s) in enumerate(zip(masks, proposal, scores, strict=True)):
        for c in (p & ~m).nonzero().flatten().tolist():
            candidates.append((float(s[c]), b, c))
    for _, b, c in sorted(candidates):
        if all(budget.met_resets(resets) for budget in budgets):
            break
        if not cross:
            trial = list(resets)
            trial[b] += 1
            if all(budget.met_resets(trial) for budget in budgets):
                break
        grown[b][c] = True
        resets[b] += 1
    return grown


@dataclass(frozen=True)
class Budgets:
    """Several budgets enforced together (FLOPs and latency): the reset set grows until ALL are met."""

    budgets: tuple[Budget, ...]

    def met(self, masks: Sequence[torch.Tensor]) -> bool:
        return all(b.met_resets(_resets(masks)) for b in self.budgets)

    def fill(self, masks: Sequence[torch.Tensor], proposal: Sequence[torch.Tensor],
             scores: Sequence[torch.Tensor], cross: bool = True) -> list[torch.Tensor]:
        return fill_budgets(self.budgets, masks, proposal, scores, cross)

    def scheduled(self, schedule: ShrinkSchedule, run_fraction: float) -> Budgets:
        return Budgets(tuple(b.scheduled(schedule, run_fraction) for b in self.budgets))

    def describe(self, masks: Sequence[torch.Tensor]) -> str:
        """One clause per budget, e.g. "FLOPs budget met: ...; latency budget met: ..."."""
        return "; ".join(b.describe_resets(_resets(masks)) for b in self.budgets)


@dataclass(frozen=True)
class FlopsBudget:
    """``limit`` MACs (``fraction`` of ``teacher_flops``) for the exported network of ``model``'s architecture
    with ``round_to`` rounding."""

    model: FlopsModel
    widths: tuple[int, ...]
    teacher_flops: int
    fraction: float
    round_to: int = 1

    @property
    def limit(self) -> float:
        return self.fraction * self.teacher_flops

    @classmethod
    def for_spec(cls, spec: ArchSpec, teacher_flops: int, fraction: float, round_to: int = 1) -> FlopsBudget:
        """Budget of ``fraction`` x ``teacher_flops`` for a full-width student ``spec``; ValueError when it is
        below the cost of the smallest network the export can keep (every block at its rounded minimum)."""
        if not 0 < fraction <= 1:
            raise ValueError(f"cdd.flops_budget must be in (0, 1] (a fraction of the teacher's FLOPs), "
                             f"found {fraction}")
        budget = cls(FlopsModel.for_spec(spec), tuple(p for _, p in spec.blocks()), teacher_flops, fraction,
                     max(1, round_to))
        floor = budget.model.flops(budget._kept(budget.widths))  # every channel reset: what the export still keeps
        if budget.limit < floor:
            raise ValueError(
                f"cdd.flops_budget = {fraction:g} is below the smallest network this student can export: "
                f"{floor:,} MACs = {100 * floor / teacher_flops:.1f}% of the teacher's (each block keeps at least "
                f"{budget.round_to} channel(s) with cdd.round_to = {budget.round_to}); gradient resetting could never "
                f"meet it; set cdd.flops_budget to at least {math.ceil(1000 * floor / teacher_flops) / 1000:g} "
                f"or lower cdd.round_to")
        return budget

    def flops(self, masks: Sequence[torch.Tensor]) -> int:
        """MACs of the exported network when the channels in ``masks`` (per-block booleans) are pruned."""
        return self.model.flops(self._kept(int(m.sum()) for m in masks))

    def _kept(self, resets: Iterable[int]) -> list[int]:
        return [rounded_kept(p, r, self.round_to) for p, r in zip(self.widths, resets, strict=True)]

    def met(self, masks: Sequence[torch.Tensor]) -> bool:
        return self.flops(masks) <= self.limit

    def met_resets(self, resets: Sequence[int]) -> bool:
        return self.model.flops(self._kept(resets)) <= self.limit

    def describe_resets(self, resets: Sequence[int]) -> str:
        flops = self.model.flops(self._kept(resets))
        state = "met" if flops <= self.limit else "NOT met"
        return (f"FLOPs budget {state}: exported network {flops:,} MACs = "
                f"{100 * flops / self.teacher_flops:.1f}% of the teacher's (budget {100 * self.fraction:.1f}%)")

    def describe(self, masks: Sequence[torch.Tensor]) -> str:
        return self.describe_resets(_resets(masks))

    def fill(self, masks: Sequence[torch.Tensor], proposal: Sequence[torch.Tensor],
             scores: Sequence[torch.Tensor], cross: bool = True) -> list[torch.Tensor]:
        """``masks`` grown by ``proposal`` within this budget alone (see :func:`fill_budgets`)."""
        return fill_budgets((self,), masks, proposal, scores, cross)

    @property
    def full_flops(self) -> int:
        """MACs of the unpruned network (nothing reset)."""
        return self.model.flops(list(self.widths))

    def scheduled(self, schedule: ShrinkSchedule, run_fraction: float) -> FlopsBudget:
        """This budget with its limit where ``schedule`` puts it at ``run_fraction`` (between the full network
        and this budget's limit)."""
        limit = schedule.allowed(self.full_flops, self.limit, run_fraction)
        return replace(self, fraction=limit / self.teacher_flops)
