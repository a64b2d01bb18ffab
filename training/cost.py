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

__all__ = ["Cost", "count_module_cost", "deployed_cost", "reduction_percent"]


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
