"""The deployed graph: raw uint8 RGB pixels in, unit-length embeddings out; normalisation inside the graph.

``images`` uint8 (N, H, W, 3) RGB -> float -> NCHW -> ``/ 255`` -> ``(x - mean) / std`` (the training eval
transform's arithmetic, ``training.data.transforms.normalize_uint8``) -> network -> L2 normalisation.
The cast comes first because TensorRT accepts a uint8 network input only when it feeds a Cast directly.
Before the L2 norm each row is divided by its largest magnitude, which leaves the result unchanged but keeps
the sum of squares within FP16 range in reduced-precision engines (the clamps are FP16-representable; an
all-zero row stays zero instead of becoming NaN).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["DeployWrapper"]


class DeployWrapper(nn.Module):
    """uint8 ``images`` (N, H, W, 3) RGB -> float32 ``embeddings`` (N, D) with unit L2 norm per row.

    ``net`` maps normalised float images (N, 3, H, W) to (N, D); ``mean``/``std`` are per-channel RGB on
    the 0..1 scale. Raises ValueError for a mean/std that is not 3 numbers or a std that is not > 0."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean/std must be 3 numbers each with std > 0, found mean={mean}, std={std}")
        self.net = net
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().permute(0, 3, 1, 2) / 255.0
        x = (x - self.mean) / self.std
        emb = self.net(x)
        emb = emb / emb.abs().amax(dim=1, keepdim=True).clamp_min(1e-6)
        return emb / torch.linalg.vector_norm(emb, dim=1, keepdim=True).clamp_min(1e-6)
