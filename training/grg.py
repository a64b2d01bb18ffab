"""Retrieval-guided gradient resetting (GRG), as in METHOD.md.

Pure pieces, each tested on its own:
- :class:`DescriptorMemory`: per-block FIFO of teacher descriptors, kept on the training device.
- :func:`step_reset_mask`: the channels every sample of the batch and every retrieved neighbour agree are
  unimportant (intersection of bottom-``ratio`` contribution sets).
- :func:`reset_indicator_gradients`: zero the task gradient of reset rows, then add the group-lasso
  subgradient ``lambda * W[i,:] / ||W[i,:]||`` (to every row in the reference rule).
- :class:`GradientResetter`: the per-step driver holding memories and the cumulative reset masks,
  with data-parallel agreement (memory holds every rank's descriptors; step masks are intersected),
  the FLOPs and latency budgets paced by the shrink schedule (`training.shrink_schedule`), and the reset rule
  (``decay``: reset rows reach exact zero on their own schedule).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.distributed as dist

from training.arch_spec import ArchSpec
from training.budget import Budgets, FlopsBudget
from training.config import CDDConfig
from training.latency_budget import LatencyBudget
from training.latency_table import LatencyTable
from training.losses import group_lasso_subgradient
from training.shrink_schedule import ShrinkSchedule

__all__ = ["DescriptorMemory", "RESET_RULES", "build_resetter", "step_reset_proposal", "step_reset_mask",
           "reset_indicator_gradients", "GradientResetter"]

log = logging.getLogger("training")


class DescriptorMemory:
    """Fixed-size FIFO of (size, dim) descriptors on ``device``; oldest entries are overwritten first."""

    def __init__(self, size: int, dim: int, device: torch.device | str = "cpu") -> None:
        if size < 1:
            raise ValueError(f"memory size must be >= 1, got {size}")
        self.buffer = torch.zeros(size, dim, device=device)
        self.pointer = 0
        self.count = 0

    def push(self, items: torch.Tensor) -> None:
        """Append (B, dim) descriptors (detached, cast to the buffer dtype)."""
        items = items.detach().to(self.buffer)
        size = self.buffer.shape[0]
        if items.shape[0] >= size:
            self.buffer.copy_(items[-size:])
            self.pointer, self.count = 0, size
            return
        end = self.pointer + items.shape[0]
        if end <= size:
            self.buffer[self.pointer:end] = items
        else:
            first = size - self.pointer
            self.buffer[self.pointer:] = items[:first]
            self.buffer[: end - size] = items[first:]
        self.pointer = end % size
        self.count = min(size, self.count + items.shape[0])

    def contents(self) -> torch.Tensor:
        """The filled part of the buffer, (count, dim)."""
        return self.buffer[: self.count]

    def release(self) -> None:
        """Free the buffer once the reset set stops growing (nothing reads the memory after that)."""
        self.buffer = self.buffer[:0]
        self.pointer = self.count = 0

    def state_dict(self) -> dict[str, object]:
        return {"buffer": self.buffer.cpu(), "pointer": self.pointer, "count": self.count}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.buffer.copy_(state["buffer"])  # type: ignore[arg-type]
        self.pointer, self.count = int(state["pointer"]), int(state["count"])  # type: ignore[arg-type]


def step_reset_proposal(teacher: torch.Tensor, student: torch.Tensor, memory: torch.Tensor, topk: int,
                        ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, scores): the boolean (p,) mask of :func:`step_reset_mask` and each channel's largest
    contribution over every (sample, neighbour) pair, the order in which a budget admits channels."""
    p = teacher.shape[1]
    n_candidates = int(ratio * p)
    if n_candidates <= 0 or memory.shape[0] == 0:
        return (torch.zeros(p, dtype=torch.bool, device=teacher.device),
                torch.zeros(p, dtype=torch.float32, device=teacher.device))
    t = torch.nn.functional.normalize(teacher.float(), dim=1)
    s = torch.nn.functional.normalize(student.float(), dim=1)
    g = torch.nn.functional.normalize(memory.float(), dim=1)
    k = min(topk, g.shape[0])
    neighbours = (t @ g.T).topk(k, dim=1).indices  # (B, k)
    contributions = (g[neighbours] * s[:, None, :]).abs()  # (B, k, p)
    smallest = contributions.topk(n_candidates, dim=2, largest=False).indices
    candidate = torch.zeros_like(contributions, dtype=torch.bool).scatter_(2, smallest, True)
    return candidate.flatten(0, 1).all(dim=0), contributions.flatten(0, 1).amax(dim=0)


def step_reset_mask(teacher: torch.Tensor, student: torch.Tensor, memory: torch.Tensor, topk: int,
                    ratio: float) -> torch.Tensor:
    """Boolean (p,) mask of channels unimportant for every sample and every neighbour.

    teacher: (B, p) teacher descriptors of the batch; student: (B, p) student post-indicator descriptors;
    memory: (M, p) teacher descriptors (the batch already pushed). For each sample j the top-``topk``
    memory entries by cosine similarity to t_j are retrieved; channel c's contribution to the
    student/neighbour similarity is |g_c * s_jc| (unit-normalised vectors); the candidates are the
    floor(ratio * p) smallest; the result is the intersection over all (j, neighbour) pairs."""
    return step_reset_proposal(teacher, student, memory, topk, ratio)[0]


def reset_indicator_gradients(weights: Sequence[torch.Tensor], reset_masks: Sequence[torch.Tensor],
                              lasso_lambda: float, lasso_on_reset_rows: bool = True) -> None:
    """In place on each ``weight.grad`` (rows = output channels): zero the rows in the reset mask, then add
    ``lasso_lambda * W[i,:]/||W[i,:]||`` to every row (the reference rule), or only to rows outside the
    mask when ``lasso_on_reset_rows`` is False (the decay rule moves reset rows itself). Call after backward
    and AMP unscaling."""
    for weight, mask in zip(weights, reset_masks, strict=True):
        if weight.grad is None:
            weight.grad = torch.zeros_like(weight)
        grad = weight.grad
        mask = mask.to(grad.device)
        lasso = group_lasso_subgradient(weight.detach())
        if not lasso_on_reset_rows:
            lasso[mask] = 0
        grad[mask] = 0
        grad.add_(lasso, alpha=lasso_lambda)


RESET_RULES = ("decay", "reference")


class GradientResetter:
    """Per-step GRG driver for one network: memories, cumulative reset masks, data-parallel agreement.

    ``rule`` "decay": a reset row gets no gradient and no momentum; after each optimizer step its norm is
    cut by ``norm_at_reset / decay_steps``, so it is exactly zero ``decay_steps`` steps after it was reset,
    and the reset set stops growing once fewer than ``decay_steps`` steps are left (every reset row is zero
    at the end). ``rule`` "reference": the paper's update (lasso subgradient + weight decay on reset rows).
    ``budget``, when given, caps the reset set: it grows until the network without it meets the budget
    (partially admitting the step that crosses it), then stops; see training/budget.py (a
    :class:`~training.budget.Budgets` holds FLOPs and latency budgets: growth stops when all are met).
    ``schedule``, with a budget, paces growth: at each step the reset set grows only up to the scheduled
    limit of that point of the run (never beyond it), reaching the budget itself at the schedule's end."""

    def __init__(self, widths: Sequence[int], memory_size: int, topk: int, ratio: float,
                 device: torch.device | str = "cpu", budget: FlopsBudget | Budgets | None = None,
                 rule: str = "decay", decay_steps: int = 1000, schedule: ShrinkSchedule | None = None) -> None:
        if rule not in RESET_RULES:
            raise ValueError(f"cdd.reset_rule must be one of {RESET_RULES}, found {rule!r}")
        if decay_steps < 1:
            raise ValueError(f"cdd.reset_decay_steps must be >= 1, found {decay_steps}")
        self.memories = [DescriptorMemory(memory_size, p, device) for p in widths]
        self.masks = [torch.zeros(p, dtype=torch.bool, device=device) for p in widths]
        self.reset_norms = [torch.zeros(p, device=device) for p in widths]
        self.topk, self.ratio = topk, ratio
        self.budget, self.rule, self.decay_steps = budget, rule, decay_steps
        self.schedule = schedule if schedule is not None and schedule.paced else None
        self.growing = True
        self.steps = 0
        self.stop_note = ""
        self._before: list[torch.Tensor] = []

    def update(self, teacher_descs: Sequence[torch.Tensor], student_descs: Sequence[torch.Tensor],
               steps_left: int | None = None, run_fraction: float | None = None) -> int:
        """Push the batch's teacher descriptors (gathered from every rank), compute this step's masks
        (intersected across ranks) and merge them into the cumulative masks, within the budget as scheduled
        at ``run_fraction`` (the share of the run elapsed; None = the budget itself).
        ``steps_left`` (optimizer steps after this one) closes the reset set in time for the decay rule.
        Returns the channels added."""
        self.steps += 1
        if not self.growing:
            return 0
        if self.rule == "decay" and steps_left is not None and steps_left < self.decay_steps:
            self._stop(f"{steps_left} steps left, fewer than cdd.reset_decay_steps={self.decay_steps}")
            return 0
        step_masks, scores = [], []
        for memory, t, s in zip(self.memories, teacher_descs, student_descs, strict=True):
            memory.push(_all_gather(t.detach()))
            mask, score = step_reset_proposal(t, s.detach(), memory.contents(), self.topk, self.ratio)
            step_masks.append(mask)
            scores.append(score)
        step_masks = _all_intersect(step_masks)
        scores = _all_max(scores)
        if self.budget is None:
            grown = [m | s for m, s in zip(self.masks, step_masks, strict=True)]
        elif self.schedule is not None and run_fraction is not None and self.schedule.progress(run_fraction) < 1:
            grown = self.budget.scheduled(self.schedule, run_fraction).fill(self.masks, step_masks, scores,
                                                                            cross=False)
        else:
            grown = self.budget.fill(self.masks, step_masks, scores)
        added = sum(int((g & ~m).sum()) for g, m in zip(grown, self.masks, strict=True))
        self.masks = grown
        if self.budget is not None and self.budget.met(grown):
            self._stop(self.budget.describe(grown))
        return added

    def _stop(self, why: str) -> None:
        self.growing = False
        reset = sum(int(m.sum()) for m in self.masks)
        self.stop_note = f"reset set frozen at GRG step {self.steps} with {reset} channels: {why}"
        log.info("gradient resetting: %s", self.stop_note)
        for memory in self.memories:
            memory.release()

    def apply(self, weights: Sequence[torch.Tensor], lasso_lambda: float) -> None:
        """Before the optimizer step: reset the task gradients of masked rows and add the lasso subgradient
        (to every row for the reference rule, to the others for the decay rule)."""
        decay = self.rule == "decay"
        reset_indicator_gradients(weights, self.masks, lasso_lambda, lasso_on_reset_rows=not decay)
        if decay:
            self._before = []
            for weight, mask, norms in zip(weights, self.masks, self.reset_norms, strict=True):
                rows = weight.detach().flatten(1)
                fresh = mask & (norms == 0)
                norms[fresh] = rows[fresh].norm(dim=1)
                self._before.append(rows[mask].clone())

    def after_step(self, weights: Sequence[torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
        """After the optimizer step (decay rule): reset rows take their shrunk pre-step value, momentum cleared."""
        if self.rule != "decay" or not self._before:
            return
        for weight, mask, norms, before in zip(weights, self.masks, self.reset_norms, self._before, strict=True):
            if not bool(mask.any()):
                continue
            norm = before.norm(dim=1, keepdim=True)
            step = (norms[mask] / self.decay_steps).unsqueeze(1)
            factor = torch.clamp(1 - step / norm.clamp_min(1e-30), min=0.0)
            shrunk = torch.where(norm > step * 1.001, before * factor, torch.zeros_like(before))
            with torch.no_grad():
                weight.view(weight.shape[0], -1)[mask] = shrunk.to(weight.dtype)
            buffer = optimizer.state.get(weight, {}).get("momentum_buffer")
            if buffer is not None:
                buffer.view(buffer.shape[0], -1)[mask] = 0
        self._before = []

    def state_dict(self, with_memory: bool = True) -> dict[str, object]:
        """Masks, reset norms and the growth state; the memories only when asked and while the reset set can
        still grow (nothing reads them afterwards, and at paper scale they are ~780 MB)."""
        keep_memory = with_memory and self.growing and any(m.count for m in self.memories)
        return {"masks": [m.cpu() for m in self.masks], "reset_norms": [n.cpu() for n in self.reset_norms],
                "memories": [m.state_dict() for m in self.memories] if keep_memory else None,
                "growing": self.growing, "steps": self.steps, "stop_note": self.stop_note}

    def load_state_dict(self, state: dict[str, object]) -> None:
        for mask, saved in zip(self.masks, state["masks"], strict=True):  # type: ignore[call-overload]
            mask.copy_(saved)
        for norms, saved in zip(self.reset_norms, state.get("reset_norms") or [], strict=True):  # type: ignore[call-overload]
            norms.copy_(saved)
        self.growing = bool(state.get("growing", True))
        self.steps = int(state.get("steps", 0))  # type: ignore[call-overload]
        self.stop_note = str(state.get("stop_note", ""))
        if state.get("memories") is not None:
            for memory, saved in zip(self.memories, state["memories"], strict=True):  # type: ignore[call-overload]
                memory.load_state_dict(saved)
        if not self.growing:
            for memory in self.memories:
                memory.release()


def build_resetter(cdd: CDDConfig, spec: ArchSpec, teacher_flops: int, device: torch.device | str = "cpu",
                   latency_table: LatencyTable | None = None, epochs: float | None = None) -> GradientResetter:
    """The resetter of a full-width CDD student ``spec`` from its config, with the FLOPs budget (a fraction of
    ``teacher_flops``, rounding included) when ``cdd.flops_budget`` > 0 and the latency budget (priced by
    ``latency_table``, measured by `training.latency_measure`) when ``cdd.latency_budget_ms`` > 0; with both,
    the reset set grows until both are met; ``cdd.shrink_curve`` paces that growth over the run of ``epochs``
    epochs (resetting starts at ``cdd.grg_start_epoch``, the budget is reached at ``cdd.shrink_end``). Used by
    the trainer and the step-time benchmark alike."""
    budgets: list[FlopsBudget | LatencyBudget] = []
    if cdd.flops_budget > 0:
        budgets.append(FlopsBudget.for_spec(spec, teacher_flops, cdd.flops_budget, cdd.round_to))
    if cdd.latency_budget_ms > 0:
        if latency_table is None:
            raise ValueError("cdd.latency_budget_ms is set but no latency table was measured; the trainer measures "
                             "it at start (training.latency_measure.table_for_run), pass it to build_step")
        budgets.append(LatencyBudget.for_table(latency_table, cdd.latency_budget_ms, cdd.round_to))
    budget: FlopsBudget | Budgets | None = None
    if len(budgets) == 1 and isinstance(budgets[0], FlopsBudget):
        budget = budgets[0]
    elif budgets:
        budget = Budgets(tuple(budgets))
    schedule = None
    if cdd.shrink_curve != "none" and budget is not None and epochs:
        schedule = ShrinkSchedule(cdd.shrink_curve, cdd.grg_start_epoch / epochs, cdd.shrink_end)
    return GradientResetter([p for _, p in spec.blocks()], cdd.memory_size, cdd.topk, cdd.ratio, device, budget,
                            cdd.reset_rule, cdd.reset_decay_steps, schedule)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate (B, d) tensors from all ranks in rank order (identity when not distributed)."""
    if not _distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def _all_max(values: list[torch.Tensor]) -> list[torch.Tensor]:
    """Elementwise maximum of each float tensor across ranks (identity when not distributed)."""
    if not _distributed():
        return values
    flat = torch.cat(values)
    dist.all_reduce(flat, op=dist.ReduceOp.MAX)
    return list(flat.split([v.numel() for v in values]))


def _all_intersect(masks: list[torch.Tensor]) -> list[torch.Tensor]:
    """Logical AND of each boolean mask across ranks (identity when not distributed)."""
    if not _distributed():
        return masks
    flat = torch.cat([m.to(torch.uint8) for m in masks])
    dist.all_reduce(flat, op=dist.ReduceOp.MIN)
    out, start = [], 0
    for m in masks:
        out.append(flat[start:start + m.numel()].bool())
        start += m.numel()
    return out
