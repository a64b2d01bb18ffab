"""Params and FLOPs, counted one way for teacher, full student and slim student.

Convention (used everywhere, including the bundle manifest):
- The network is counted in its *deployable* form: a plain ResNet whose inner 3x3 (bottleneck) or first
  (basic) conv outputs only the kept channels. Indicators are training scaffolding folded into that conv,
  so they are not counted; a teacher and an unpruned student therefore cost the same.
- params: all trainable parameters (conv weights, BN affine, head) excluding the ID classifier.
- flops: multiply-accumulates of Conv2d and Linear layers for one image at the spec's input size
  (BN, ReLU, pooling and additions excluded — they are not MACs, and an ONNX graph count agrees).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from training.arch_spec import ArchSpec
from training.models.network import ReIDNet

__all__ = ["Cost", "FlopsModel", "count_module_cost", "deployed_cost", "reduction_percent"]


@dataclass(frozen=True)
class Cost:
    """params (count) and flops (multiply-accumulates per image)."""

    params: int
    flops: int

    def to_dict(self) -> dict[str, int]:
        return {"params": self.params, "flops": self.flops}


def count_module_cost(model: nn.Module, input_size: tuple[int, int], exclude: tuple[nn.Module, ...] = ()) -> Cost:
    """Count params (excluding ``exclude`` modules' params) and Conv2d/Linear MACs for one (1, 3, H, W) input."""
    excluded = {id(p) for m in exclude for p in m.parameters()}
    params = sum(p.numel() for p in model.parameters() if id(p) not in excluded)
    macs = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            macs += output.numel() * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Linear):
            macs += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, nn.Conv2d | nn.Linear) and m not in exclude]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, *input_size))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return Cost(params=params, flops=macs)


def _plain_equivalent(spec: ArchSpec) -> ReIDNet:
    """The indicator-free network whose pre-indicator conv outputs the kept channel count."""
    return ReIDNet(replace(spec, indicators=False, num_classes=0))


def deployed_cost(spec: ArchSpec) -> Cost:
    """Cost of the deployable form of ``spec`` at ``spec.input_size`` (see module docstring)."""
    return count_module_cost(_plain_equivalent(spec), spec.input_size)


def reduction_percent(reference: Cost, reduced: Cost) -> dict[str, float]:
    """Percent fewer params / flops of ``reduced`` relative to ``reference``."""
    return {
        "params": 100.0 * (1 - reduced.params / reference.params),
        "flops": 100.0 * (1 - reduced.flops / reference.flops),
    }


@dataclass(frozen=True)
class FlopsModel:
    """Deployed FLOPs as an exact linear function of the per-block kept counts (each block's kept count
    only changes the conv before and the conv after its indicator slot): ``flops = base + sum(slope_b * k_b)``.
    Built once with ``len(blocks) + 1`` counts; evaluating it costs nothing, so the budget check can run
    every training step."""

    base: int
    slopes: tuple[int, ...]

    @classmethod
    def for_spec(cls, spec: ArchSpec) -> FlopsModel:
        widths = [p for _, p in spec.blocks()]
        full_spec = replace(spec, kept_channels=None)
        full = deployed_cost(full_spec).flops
        slopes = []
        for b, p in enumerate(widths):
            if p == 1:
                slopes.append(0)
                continue
            kept = [list(range(w)) for w in widths]
            kept[b] = [0]
            reduced = deployed_cost(replace(full_spec, indicators=True).with_kept(kept)).flops
            slopes.append((full - reduced) // (p - 1))
        base = full - sum(s * p for s, p in zip(slopes, widths, strict=True))
        return cls(base=base, slopes=tuple(slopes))

    def flops(self, kept_counts: list[int]) -> int:
        return self.base + sum(s * k for s, k in zip(self.slopes, kept_counts, strict=True))

    def max_step(self, round_to: int = 1) -> int:
        """MACs of one rounding step (``round_to`` channels) of the most expensive block."""
        return max(self.slopes) * max(1, round_to)
