"""Distillation on mixed images ("function matching", Beyer et al., CVPR 2022: *Knowledge distillation:
a good teacher is patient and consistent*).

Each step the batch of B training images is followed by B mixed images x' = lam * x + (1 - lam) * x[perm]
(lam ~ Beta(alpha, alpha) per image, perm a permutation of the batch) that teacher and student both see.
The distillation terms (logit KL, feature, compatibility) are taken on all 2B images; the supervised terms
(ID, triplet) and gradient resetting on the B training images only: the mixed images carry no label. The
student then learns the teacher's function between the training identities as well as on them, which is
what a test on identities never seen in training asks of it.

The mixing of a step is drawn from (seed, rank, step), so a resumed run mixes exactly as an uninterrupted
one and data-parallel ranks mix differently.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["DistillMixup"]


class DistillMixup:
    """Appends a mixed copy to a batch: ``mixer(images, step)`` -> (2B, C, H, W).

    ``alpha`` > 0 shapes Beta(alpha, alpha) (1 = lam uniform in [0, 1]); ``seed`` and ``rank`` fix the
    draws together with the step index."""

    def __init__(self, alpha: float, seed: int, rank: int = 0) -> None:
        if not alpha > 0:
            raise ValueError(f"DistillMixup alpha must be > 0, found {alpha}")
        self.alpha, self.seed, self.rank = float(alpha), int(seed), int(rank)

    def draw(self, batch: int, step: int) -> tuple[np.ndarray, np.ndarray]:
        """The mixing weights (batch,) and partner permutation (batch,) of step ``step``."""
        rng = np.random.default_rng((self.seed, self.rank, int(step)))
        return rng.beta(self.alpha, self.alpha, batch), rng.permutation(batch)

    def __call__(self, images: torch.Tensor, step: int) -> torch.Tensor:
        lam_np, perm_np = self.draw(images.shape[0], step)
        lam = torch.from_numpy(lam_np).to(images.device, images.dtype).view(-1, 1, 1, 1)
        perm = torch.from_numpy(perm_np).to(images.device)
        return torch.cat([images, lam * images + (1.0 - lam) * images[perm]])
