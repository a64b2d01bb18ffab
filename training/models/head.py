"""The reference retrieval head: pool -> BN1d -> ReLU -> Linear (no bias) -> BN1d = embedding -> classifier."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["EmbeddingHead"]


class EmbeddingHead(nn.Module):
    """Maps a pooled feature (B, C) to the embedding (B, D); ``classifier`` (D -> num_classes, no bias)
    exists only when ``num_classes > 0`` and is excluded from params counts and exports."""

    def __init__(self, in_features: int, embedding_dim: int = 512, num_classes: int = 0) -> None:
        super().__init__()
        self.bn_pool = nn.BatchNorm1d(in_features)
        self.embed = nn.Linear(in_features, embedding_dim, bias=False)
        self.bn_embed = nn.BatchNorm1d(embedding_dim)
        self.classifier = nn.Linear(embedding_dim, num_classes, bias=False) if num_classes > 0 else None
        nn.init.kaiming_normal_(self.embed.weight, mode="fan_out")
        if self.classifier is not None:
            nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.bn_embed(self.embed(torch.relu(self.bn_pool(pooled))))
