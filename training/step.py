"""One optimisation step of teacher or CDD-student training, as the method reads:
teacher forward -> student forward -> named losses -> backward -> (AMP unscale) -> gradient resetting ->
optimizer step (with `training.distill_mixup`, both forwards also see a mixed copy of the batch). The
trainer and the step-time benchmark share it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from training.config import LossConfig, OptimConfig, TrainConfig
from training.distill_mixup import DistillMixup
from training.distillation import compute_losses
from training.grg import GradientResetter, build_resetter
from training.latency_table import LatencyTable
from training.models.network import ReIDNet, TrainOutput
from training.refine import FrozenRows

__all__ = ["DistillationStep", "build_optimizer", "build_step"]


def build_optimizer(net: ReIDNet, optim: OptimConfig) -> torch.optim.SGD:
    """SGD with three groups carrying an ``lr_mult``: backbone (1), head (head_lr_mult), indicators
    (indicator_lr_mult); weight decay on everything."""
    head = list(net.head.parameters())
    indicators = [p for m in net.indicators() for p in m.parameters()]
    special = {id(p) for p in head + indicators}
    backbone = [p for p in net.parameters() if id(p) not in special]
    groups = [{"params": backbone, "lr_mult": 1.0}, {"params": head, "lr_mult": optim.head_lr_mult}]
    if indicators:
        groups.append({"params": indicators, "lr_mult": optim.indicator_lr_mult})
    for g in groups:
        g["lr"] = optim.lr * g["lr_mult"]
    return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)


@dataclass
class DistillationStep:
    """Everything one step touches. ``forward`` is the student's train forward (possibly DDP-wrapped);
    ``teacher`` is frozen or None (teacher training); ``resetter`` is None without gradient resetting;
    ``teacher_channels`` selects teacher descriptor channels for static slim students; ``frozen`` holds a
    refine run's pruned indicator rows at zero (`training.refine`)."""

    net: ReIDNet
    forward: Callable[[torch.Tensor], TrainOutput]
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    losses: LossConfig
    teacher: ReIDNet | None = None
    resetter: GradientResetter | None = None
    teacher_channels: Sequence[torch.Tensor] | None = None
    amp: bool = False
    grad_clip: float = 0.0
    mixup: DistillMixup | None = None
    frozen: FrozenRows | None = None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, grg_active: bool,
                 steps_left: int | None = None, step_index: int = 0) -> dict[str, float]:
        """Run one step; returns the named loss values, "total", and "reset_added" while resetting.
        ``steps_left``: optimizer steps of the run after this one (lets the reset set close in time);
        ``step_index``: the step's number in the run (draws the mixing of ``mixup``; with ``steps_left``, the
        run fraction that the shrink schedule is read at)."""
        indicator_weights = [m.weight for m in self.net.indicators()]
        if self.mixup is not None:
            images = self.mixup(images, step_index)
        with torch.autocast(images.device.type, enabled=self.amp):
            teacher_out = None
            if self.teacher is not None:
                with torch.no_grad():
                    teacher_out = self.teacher.forward_train(images)
            student_out = self.forward(images)
            losses = compute_losses(student_out, labels, self.losses, teacher_out, indicator_weights,
                                    lasso_in_loss=not grg_active, teacher_channels=self.teacher_channels,
                                    student_head=self.net.head)
        total = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.unscale_(self.optimizer)
        stats = {name: float(v.detach()) for name, v in losses.items()}
        resetting = grg_active and self.resetter is not None and teacher_out is not None
        if resetting:  # on the labelled training images only, as the method reads
            clean = labels.shape[0]
            fraction = step_index / (step_index + steps_left + 1) if steps_left is not None else None
            stats["reset_added"] = self.resetter.update(teacher_out.first(clean).pre_descriptors,
                                                        student_out.first(clean).post_descriptors, steps_left,
                                                        fraction)
            self.resetter.apply(indicator_weights, self.losses.lasso_lambda)
        if self.frozen is not None:
            self.frozen.clear_grads(indicator_weights)
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.net.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.frozen is not None:
            self.frozen.zero_rows(indicator_weights)
        if resetting:
            self.resetter.after_step(indicator_weights, self.optimizer)
        stats["total"] = float(total.detach())
        return stats


def build_step(cfg: TrainConfig, net: ReIDNet, device: torch.device, teacher: ReIDNet | None = None,
               teacher_flops: int = 0,
               forward: Callable[[torch.Tensor], TrainOutput] | None = None,
               teacher_channels: Sequence[torch.Tensor] | None = None,
               latency_table: LatencyTable | None = None, rank: int = 0) -> DistillationStep:
    """The step of the run ``cfg`` for ``net`` on ``device``, built one way for the trainer and the
    step-time benchmark: optimizer groups, AMP scaler, and, for a CDD student (indicators, gradient_reset
    on), the gradient resetter with its FLOPs budget (``cfg.cdd.flops_budget`` x ``teacher_flops``) and
    latency budget (``cfg.cdd.latency_budget_ms``, priced by ``latency_table``), and, for any student with
    ``cfg.loss.distill_mixup_alpha`` > 0, the mixed copy of each batch (drawn from run.seed and ``rank``)."""
    amp = cfg.run.amp and device.type == "cuda"
    optimizer = build_optimizer(net, cfg.optim)
    resetter = None
    if teacher is not None and net.indicators() and cfg.cdd.gradient_reset:
        resetter = build_resetter(cfg.cdd, net.spec, teacher_flops, device, latency_table, cfg.run.epochs)
    mixup = None
    if teacher is not None and cfg.loss.distill_mixup_alpha > 0:
        mixup = DistillMixup(cfg.loss.distill_mixup_alpha, cfg.run.seed, rank)
    return DistillationStep(net, forward or net.forward_train, optimizer, torch.amp.GradScaler("cuda", enabled=amp),
                            cfg.loss, teacher, resetter, teacher_channels, amp, cfg.optim.grad_clip, mixup)
