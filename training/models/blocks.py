"""Residual blocks with an optional CDD indicator, using torchvision's parameter names.

Bottleneck: conv1x1 -> BN -> ReLU -> conv3x3 -> BN -> [indicator] -> ReLU -> conv1x1 -> BN, + shortcut, ReLU.
Basic:      conv3x3 -> BN -> [indicator] -> ReLU -> conv3x3 -> BN, + shortcut, ReLU.

``kept`` is the number of inner channels that survive pruning. With an indicator, the indicator has
``kept`` rows and the conv after it takes ``kept`` inputs. Without one (a plain slim network: the
deployable equivalent, or a static student), the conv before the slot outputs ``kept`` channels directly.
Block outputs and shortcuts always keep their full width.
"""

from __future__ import annotations

import torch
from torch import nn

from training.models.indicator import ChannelIndicator

__all__ = ["BasicBlock", "Bottleneck", "BlockOutput"]

BlockOutput = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]
"""(block output, pooled pre-indicator descriptor (B, p), pooled post-indicator descriptor (B, kept) or None)."""


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class _ResidualBlock(nn.Module):
    """Shared mechanics: indicator slot, descriptor capture, shortcut."""

    expansion = 1
    indicator: ChannelIndicator | None
    downsample: nn.Module | None

    def _inner(self, x: torch.Tensor) -> torch.Tensor:
        """Input -> output of the BN right before the indicator slot."""
        raise NotImplementedError

    def _outer(self, h: torch.Tensor) -> torch.Tensor:
        """Post-ReLU inner activation -> block branch output (before the residual add)."""
        raise NotImplementedError

    def forward_with_descriptors(self, x: torch.Tensor) -> BlockOutput:
        """Forward pass that also returns the spatially pooled descriptors used by CDD."""
        inner = self._inner(x)
        pre = inner.mean(dim=(2, 3))
        post = None
        if self.indicator is not None:
            inner = self.indicator(inner)
            post = inner.mean(dim=(2, 3))
        out = self._outer(torch.relu(inner))
        identity = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + identity), pre, post

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inner = self._inner(x)
        if self.indicator is not None:
            inner = self.indicator(inner)
        out = self._outer(torch.relu(inner))
        identity = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + identity)

    @property
    def inner_width(self) -> int:
        """Full inner width p (indicator input channels)."""
        raise NotImplementedError


class BasicBlock(_ResidualBlock):
    """ResNet-18/34 block; the indicator follows bn1."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 indicator: bool = False, kept: int | None = None) -> None:
        super().__init__()
        kept = planes if kept is None else kept
        inner = planes if indicator else kept
        self.conv1 = _conv3x3(inplanes, inner, stride)
        self.bn1 = nn.BatchNorm2d(inner)
        self.indicator = ChannelIndicator(planes, kept) if indicator else None
        self.conv2 = _conv3x3(kept, planes * self.expansion)
        self.bn2 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = downsample
        self._planes = planes

    def _inner(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn1(self.conv1(x))

    def _outer(self, h: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(h))

    @property
    def inner_width(self) -> int:
        return self._planes


class Bottleneck(_ResidualBlock):
    """ResNet-50/101/152 block (stride on the 3x3 conv, as torchvision); the indicator follows bn2."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 indicator: bool = False, kept: int | None = None) -> None:
        super().__init__()
        kept = planes if kept is None else kept
        inner = planes if indicator else kept
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, inner, stride)
        self.bn2 = nn.BatchNorm2d(inner)
        self.indicator = ChannelIndicator(planes, kept) if indicator else None
        self.conv3 = _conv1x1(kept, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = downsample
        self._planes = planes

    def _inner(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))

    def _outer(self, h: torch.Tensor) -> torch.Tensor:
        return self.bn3(self.conv3(h))

    @property
    def inner_width(self) -> int:
        return self._planes
