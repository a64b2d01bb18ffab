"""The deployed graph: raw uint8 RGB pixels in, unit-length embeddings out; normalisation inside the graph.

``images`` uint8 (N, H, W, 3) RGB -> float -> NCHW -> ``/ 255`` -> ``(x - mean) / std`` (the training eval
transform's arithmetic, ``training.data.transforms.normalize_uint8``) -> network -> L2 normalisation.
The cast comes first because TensorRT accepts a uint8 network input only when it feeds a Cast directly.
Before the L2 norm each row is divided by its largest magnitude, which leaves the result unchanged but keeps
the sum of squares within FP16 range in reduced-precision engines (the clamps are FP16-representable; an
all-zero row stays zero instead of becoming NaN).

``with_input_size`` gives the same network with the normalisation written as one multiply-add whose
constants have the full input size (1, 3, H, W). The int8 graph needs it: ONNX Runtime runs quantised
convolutions channels-last and moves the NCHW transpose behind the normalisation, where per-channel (1, 3, 1, 1)
constants would broadcast over an innermost axis of 3 (measured: 1.0-1.4 ms per op at batch 32 on the
64x32 demo student, a third of its int8 time); full-size constants broadcast over the batch axis only.
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

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> normalised float (N, 3, H, W)."""
        x = images.float().permute(0, 3, 1, 2) / 255.0
        return (x - self.mean) / self.std

    def with_input_size(self, size_hw: Sequence[int]) -> DeployWrapper:
        """The same network and normalisation for inputs of exactly ``size_hw``, as a single multiply-add
        with full-size constants (see the module docstring). Raises ValueError for a size that is not 2
        positive ints."""
        return _FullSizeNormalisation(self, size_hw)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        emb = self.net(self.normalise(images))
        emb = emb / emb.abs().amax(dim=1, keepdim=True).clamp_min(1e-6)
        return emb / torch.linalg.vector_norm(emb, dim=1, keepdim=True).clamp_min(1e-6)


class _FullSizeNormalisation(DeployWrapper):
    """A DeployWrapper whose normalisation is ``x * scale + shift`` with (1, 3, H, W) constants."""

    def __init__(self, base: DeployWrapper, size_hw: Sequence[int]) -> None:
        mean, std = base.mean.flatten().tolist(), base.std.flatten().tolist()
        super().__init__(base.net, mean, std)
        if len(size_hw) != 2 or min(int(v) for v in size_hw) <= 0:
            raise ValueError(f"input size must be (height, width) > 0, found {tuple(size_hw)}")
        full = (1, 3, int(size_hw[0]), int(size_hw[1]))
        self.register_buffer("scale", (1.0 / (255.0 * self.std)).expand(full).contiguous())
        self.register_buffer("shift", (-self.mean / self.std).expand(full).contiguous())
        self.train(base.training)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return images.float().permute(0, 3, 1, 2) * self.scale + self.shift
