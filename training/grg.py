"""Retrieval-guided gradient resetting (GRG), as in METHOD.md.

Pure pieces, each tested on its own:
- :class:`DescriptorMemory`: per-block FIFO of teacher descriptors, kept on the training device.
- :func:`step_reset_mask`: the channels every sample of the batch and every retrieved neighbour agree are
  unimportant (intersection of bottom-``ratio`` contribution sets).
- :func:`reset_indicator_gradients`: zero the task gradient of reset rows, then add the group-lasso
  subgradient ``lambda * W[i,:] / ||W[i,:]||`` to every row.
- :class:`GradientResetter`: the per-step driver holding memories and the cumulative reset masks,
  with data-parallel agreement (memory holds every rank's descriptors; step masks are intersected).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist

from training.losses import group_lasso_subgradient

__all__ = ["DescriptorMemory", "step_reset_mask", "reset_indicator_gradients", "GradientResetter"]


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

    def state_dict(self) -> dict[str, object]:
        return {"buffer": self.buffer.cpu(), "pointer": self.pointer, "count": self.count}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.buffer.copy_(state["buffer"])  # type: ignore[arg-type]
        self.pointer, self.count = int(state["pointer"]), int(state["count"])  # type: ignore[arg-type]


def step_reset_mask(teacher: torch.Tensor, student: torch.Tensor, memory: torch.Tensor, topk: int,
                    ratio: float) -> torch.Tensor:
    """Boolean (p,) mask of channels unimportant for every sample and every neighbour.

    teacher: (B, p) teacher descriptors of the batch; student: (B, p) student post-indicator descriptors;
    memory: (M, p) teacher descriptors (the batch already pushed). For each sample j the top-``topk``
    memory entries by cosine similarity to t_j are retrieved; channel c's contribution to the
    student/neighbour similarity is |g_c * s_jc| (unit-normalised vectors); the candidates are the
    floor(ratio * p) smallest; the result is the intersection over all (j, neighbour) pairs."""
    p = teacher.shape[1]
    n_candidates = int(ratio * p)
    if n_candidates <= 0 or memory.shape[0] == 0:
        return torch.zeros(p, dtype=torch.bool, device=teacher.device)
    t = torch.nn.functional.normalize(teacher.float(), dim=1)
    s = torch.nn.functional.normalize(student.float(), dim=1)
    g = torch.nn.functional.normalize(memory.float(), dim=1)
    k = min(topk, g.shape[0])
    neighbours = (t @ g.T).topk(k, dim=1).indices  # (B, k)
    contributions = (g[neighbours] * s[:, None, :]).abs()  # (B, k, p)
    smallest = contributions.topk(n_candidates, dim=2, largest=False).indices
    candidate = torch.zeros_like(contributions, dtype=torch.bool).scatter_(2, smallest, True)
    return candidate.flatten(0, 1).all(dim=0)


def reset_indicator_gradients(weights: Sequence[torch.Tensor], reset_masks: Sequence[torch.Tensor],
                              lasso_lambda: float) -> None:
    """In place on each ``weight.grad`` (rows = output channels): zero the rows in the reset mask, then add
    ``lasso_lambda * W[i,:]/||W[i,:]||`` to every row. Call after backward and AMP unscaling."""
    for weight, mask in zip(weights, reset_masks, strict=True):
        if weight.grad is None:
            weight.grad = torch.zeros_like(weight)
        grad = weight.grad
        grad[mask.to(grad.device)] = 0
        grad.add_(group_lasso_subgradient(weight.detach()), alpha=lasso_lambda)


class GradientResetter:
    """Per-step GRG driver for one network: memories, cumulative reset masks, data-parallel agreement.

    ``can_grow(masks)``, when given, is asked before new channels are added (budget extension: it returns
    False once the network pruned by ``masks`` meets the budget, and the reset set stops growing)."""

    def __init__(self, widths: Sequence[int], memory_size: int, topk: int, ratio: float,
                 device: torch.device | str = "cpu",
                 can_grow: Callable[[list[torch.Tensor]], bool] | None = None) -> None:
        self.memories = [DescriptorMemory(memory_size, p, device) for p in widths]
        self.masks = [torch.zeros(p, dtype=torch.bool, device=device) for p in widths]
        self.topk, self.ratio = topk, ratio
        self.can_grow = can_grow
        self.growing = True

    def update(self, teacher_descs: Sequence[torch.Tensor], student_descs: Sequence[torch.Tensor]) -> int:
        """Push the batch's teacher descriptors (gathered from every rank), compute this step's masks
        (intersected across ranks) and merge them into the cumulative masks. Returns channels added."""
        if not self.growing:
            return 0
        step_masks = []
        for memory, t, s in zip(self.memories, teacher_descs, student_descs, strict=True):
            memory.push(_all_gather(t.detach()))
            step_masks.append(step_reset_mask(t, s.detach(), memory.contents(), self.topk, self.ratio))
        step_masks = _all_intersect(step_masks)
        proposal = [m | s for m, s in zip(self.masks, step_masks, strict=True)]
        if self.can_grow is not None and not self.can_grow(proposal):
            self.growing = False
            return 0
        added = sum(int((p & ~m).sum()) for p, m in zip(proposal, self.masks, strict=True))
        self.masks = proposal
        return added

    def apply(self, weights: Sequence[torch.Tensor], lasso_lambda: float) -> None:
        """Reset task gradients of masked rows and add the lasso subgradient to every row."""
        reset_indicator_gradients(weights, self.masks, lasso_lambda)

    def state_dict(self) -> dict[str, object]:
        return {"masks": [m.cpu() for m in self.masks], "memories": [m.state_dict() for m in self.memories],
                "growing": self.growing}

    def load_state_dict(self, state: dict[str, object]) -> None:
        for mask, saved in zip(self.masks, state["masks"], strict=True):  # type: ignore[call-overload]
            mask.copy_(saved)
        for memory, saved in zip(self.memories, state["memories"], strict=True):  # type: ignore[call-overload]
            memory.load_state_dict(saved)
        self.growing = bool(state.get("growing", True))


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate (B, d) tensors from all ranks in rank order (identity when not distributed)."""
    if not _distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


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
