"""The hard FLOPs budget of a CDD run: what the exported network may cost, and how the reset set grows into it.

The exported network keeps, per block, the channels outside the reset set, rounded UP to a multiple of
``round_to`` (never more than the full width, never fewer than one). :class:`FlopsBudget` prices a reset set
exactly that way, so "the budget is met" means the exported network costs at most ``limit`` MACs.
:meth:`FlopsBudget.fill` grows a reset set by a step's proposal: all of it while the budget is not reached,
else only the proposal's channels of smallest contribution, one at a time, until it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from training.arch_spec import ArchSpec
from training.cost import FlopsModel

__all__ = ["FlopsBudget", "rounded_kept"]


def rounded_kept(width: int, reset: int, round_to: int) -> int:
    """Channels the exported block keeps when ``reset`` of its ``width`` are reset: at least one, rounded up
    to a multiple of ``round_to``, capped at ``width``."""
    kept = max(1, width - reset)
    if round_to > 1:
        kept = min(width, -(-kept // round_to) * round_to)
    return kept


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
        """Budget of ``fraction`` x ``teacher_flops`` for a full-width student ``spec``."""
        if not 0 < fraction <= 1:
            raise ValueError(f"cdd.flops_budget must be in (0, 1] (a fraction of the teacher's FLOPs), "
                             f"found {fraction}")
        return cls(FlopsModel.for_spec(spec), tuple(p for _, p in spec.blocks()), teacher_flops, fraction,
                   max(1, round_to))

    def flops(self, masks: Sequence[torch.Tensor]) -> int:
        """MACs of the exported network when the channels in ``masks`` (per-block booleans) are pruned."""
        return self.model.flops(self._kept(int(m.sum()) for m in masks))

    def _kept(self, resets: Iterable[int]) -> list[int]:
        return [rounded_kept(p, r, self.round_to) for p, r in zip(self.widths, resets, strict=True)]

    def met(self, masks: Sequence[torch.Tensor]) -> bool:
        return self.flops(masks) <= self.limit

    def fill(self, masks: Sequence[torch.Tensor], proposal: Sequence[torch.Tensor],
             scores: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``masks`` grown by ``proposal``: entirely if that does not reach the budget, else channel by channel
        in order of increasing ``scores`` (the channel's contribution) until the budget is met."""
        merged = [m | p for m, p in zip(masks, proposal, strict=True)]
        if not self.met(merged):
            return merged
        grown = [m.clone() for m in masks]
        resets = [int(m.sum()) for m in grown]
        candidates = []
        for b, (m, p, s) in enumerate(zip(masks, proposal, scores, strict=True)):
            for c in (p & ~m).nonzero().flatten().tolist():
                candidates.append((float(s[c]), b, c))
        for _, b, c in sorted(candidates):
            if self.model.flops(self._kept(resets)) <= self.limit:
                break
            grown[b][c] = True
            resets[b] += 1
        return grown
