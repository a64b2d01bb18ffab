"""ResNet backbones (18/34/50/101/152, width multiplier, last-stage stride) with torchvision names.

A user's local torchvision ImageNet weight file loads into :class:`ResNetBackbone` strictly (its ``fc``
classifier is dropped; indicators, absent from such files, keep their identity init).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from training.arch_spec import DEPTHS, ArchSpec, stage_widths
from training.models.blocks import BasicBlock, BlockOutput, Bottleneck

__all__ = ["ResNetBackbone", "load_imagenet_weights"]


class ResNetBackbone(nn.Module):
    """conv1/bn1/relu/maxpool + layer1..4, built from an :class:`ArchSpec` (kept channels included)."""

    def __init__(self, spec: ArchSpec) -> None:
        super().__init__()
        block_type, counts = DEPTHS[spec.depth]
        block_cls = BasicBlock if block_type == "basic" else Bottleneck
        widths = stage_widths(spec.width)
        kept = iter(spec.kept_counts())
        self.conv1 = nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = widths[0]
        strides = (1, 2, 2, spec.last_stride)
        for stage, (planes, count, stride) in enumerate(zip(widths[1:], counts, strides, strict=True)):
            blocks = []
            for i in range(count):
                s = stride if i == 0 else 1
                downsample = None
                if s != 1 or inplanes != planes * block_cls.expansion:
                    downsample = nn.Sequential(
                        nn.Conv2d(inplanes, planes * block_cls.expansion, 1, stride=s, bias=False),
                        nn.BatchNorm2d(planes * block_cls.expansion),
                    )
                blocks.append(block_cls(inplanes, planes, s, downsample, indicator=spec.indicators, kept=next(kept)))
                inplanes = planes * block_cls.expansion
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
        self.out_channels = inplanes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for block in self.blocks():
            if block.indicator is not None and block.indicator.out_channels == block.indicator.in_channels:
                block.indicator.reset_parameters()

    def blocks(self) -> list[BasicBlock | Bottleneck]:
        """Residual blocks in forward order."""
        return [b for stage in (self.layer1, self.layer2, self.layer3, self.layer4) for b in stage]

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, C, H/16 or H/32, ...) feature map."""
        x = self._stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_with_descriptors(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor | None]]:
        """Feature map plus per-block pooled pre-indicator and post-indicator descriptors."""
        x = self._stem(x)
        pre, post = [], []
        for block in self.blocks():
            out: BlockOutput = block.forward_with_descriptors(x)
            x, p, q = out
            pre.append(p)
            post.append(q)
        return x, pre, post


def load_imagenet_weights(backbone: ResNetBackbone, path: str | Path) -> None:
    """Load a torchvision-layout ImageNet state_dict file strictly (its ``fc.*`` keys are ignored).

    Raises FileNotFoundError, or ValueError listing missing/unexpected keys (e.g. a depth/width mismatch)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ImageNet weight file not found; pass a local torchvision ResNet "
                                "state_dict (.pth), nothing is downloaded at run time")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = backbone.state_dict()
    expected = {k for k in own if ".indicator." not in k}
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"{path}: not a matching torchvision ResNet state_dict; missing keys {missing[:5]}, "
                         f"unexpected keys {unexpected[:5]}; check depth/width in the config")
    for key, value in state.items():
        if own[key].shape != value.shape:
            raise ValueError(f"{path}: {key} has shape {tuple(value.shape)}, the network expects "
                             f"{tuple(own[key].shape)}; check depth/width in the config")
    backbone.load_state_dict(state, strict=False)
