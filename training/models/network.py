"""The re-ID network: ResNet backbone + embedding head, rebuilt from an :class:`ArchSpec`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from training.arch_spec import ArchSpec
from training.models.head import EmbeddingHead
from training.models.resnet import ResNetBackbone

__all__ = ["ReIDNet", "TrainOutput", "build_network"]


@dataclass
class TrainOutput:
    """Everything the losses need from one forward pass.

    pooled (B, C) pre-head feature (triplet), embedding (B, D), logits (B, num_classes) or None,
    pre_descriptors / post_descriptors: per block pooled (B, p) / (B, kept) tensors (post None without
    indicators)."""

    pooled: torch.Tensor
    embedding: torch.Tensor
    logits: torch.Tensor | None
    pre_descriptors: list[torch.Tensor]
    post_descriptors: list[torch.Tensor | None]

    def first(self, rows: int) -> TrainOutput:
        """The outputs of the first ``rows`` images of the batch (self when that is all of them)."""
        if rows == self.pooled.shape[0]:
            return self
        return TrainOutput(self.pooled[:rows], self.embedding[:rows],
                           None if self.logits is None else self.logits[:rows],
                           [d[:rows] for d in self.pre_descriptors],
                           [None if d is None else d[:rows] for d in self.post_descriptors])


class ReIDNet(nn.Module):
    """``forward`` maps normalised images (B, 3, H, W) to embeddings (B, D) (not L2-normalised);
    ``forward_train`` returns a :class:`TrainOutput`."""

    def __init__(self, spec: ArchSpec) -> None:
        super().__init__()
        spec.validate()
        self.spec = spec
        self.backbone = ResNetBackbone(spec)
        self.head = EmbeddingHead(self.backbone.out_channels, spec.embedding_dim, spec.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x).mean(dim=(2, 3)))

    def forward_train(self, x: torch.Tensor) -> TrainOutput:
        fmap, pre, post = self.backbone.forward_with_descriptors(x)
        pooled = fmap.mean(dim=(2, 3))
        embedding = self.head(pooled)
        logits = self.head.classifier(embedding) if self.head.classifier is not None else None
        return TrainOutput(pooled, embedding, logits, pre, post)

    def indicators(self) -> list[nn.Module]:
        """Per-block indicators in forward order (empty for networks without indicators)."""
        return [b.indicator for b in self.backbone.blocks() if b.indicator is not None]


def build_network(spec: ArchSpec) -> ReIDNet:
    """Build a freshly initialised network for ``spec`` (full width or slim)."""
    return ReIDNet(spec)
