"""P x K identity-balanced batch sampler for metric learning, data-parallel aware."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

__all__ = ["IdentityBalancedBatchSampler"]


class IdentityBalancedBatchSampler(Sampler[list[int]]):
    """Yields batches of dataset indices: `p` distinct identities x `k` images each (identity-major).

    Each epoch draws identities from successive random permutations of all identities (so every
    identity appears about equally often) and, per identity, takes the next `k` images of its own
    shuffled pool; an identity with fewer than `k` images is sampled with replacement. The epoch has
    about one pass over the data: len(labels) // (p * k) batches (at least one per rank).

    Data parallel: all ranks build the same epoch from (seed, epoch); rank r takes batches
    r, r + world_size, ... so shares are disjoint and equally long. `drop_last=True` rounds the
    global batch count down to a multiple of world_size, `False` rounds it up (extra batches are
    freshly drawn, never truncated). Call `set_epoch` before each epoch for a new shuffle.
    """

    def __init__(
        self,
        labels: Sequence[int],
        p: int,
        k: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ) -> None:
        super().__init__()
        if p < 1 or k < 1:
            raise ValueError(f"p and k must be >= 1, got p={p}, k={k}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        labels_array = np.asarray(labels, dtype=np.int64)
        if labels_array.ndim != 1 or labels_array.size == 0:
            raise ValueError(f"labels must be a non-empty 1-d sequence, got shape {labels_array.shape}")
        identities = np.unique(labels_array)
        if p > identities.size:
            raise ValueError(
                f"p={p} identities per batch but the labels hold only {identities.size}; lower p"
            )
        self._pools = [np.flatnonzero(labels_array == ident) for ident in identities]
        self.p, self.k, self.seed = p, k, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        global_batches = max(labels_array.size // (p * k), 1)
        rounding = math.floor if drop_last else math.ceil
        self._per_rank = max(rounding(global_batches / world_size), 1)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose permutation the next iteration uses (same on every rank)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self._per_rank

    def __iter__(self) -> Iterator[list[int]]:
        batches = _epoch_batches(
            self._pools, self.p, self.k, self._per_rank * self.world_size, (self.seed, self.epoch)
        )
        yield from batches[self.rank :: self.world_size]


def _epoch_batches(
    pools: list[np.ndarray], p: int, k: int, count: int, seed: tuple[int, int]
) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    id_stream = _IdentityStream(len(pools), rng)
    cursors = [_ImageCursor(pool, rng) for pool in pools]
    batches = []
    for _ in range(count):
        identities = id_stream.take_distinct(p)
        batches.append([index for ident in identities for index in cursors[ident].take(k)])
    return batches


class _IdentityStream:
    """Identities in successive random permutations; `take_distinct` defers repeats to the next batch."""

    def __init__(self, num_ids: int, rng: np.random.Generator) -> None:
        self._num_ids, self._rng = num_ids, rng
        self._queue: list[int] = []
        self._deferred: list[int] = []

    def take_distinct(self, count: int) -> list[int]:
        chosen: list[int] = []
        deferred, self._deferred = self._deferred, []
        while len(chosen) < count:
            if deferred:
                ident = deferred.pop(0)
            else:
                if not self._queue:
                    self._queue = self._rng.permutation(self._num_ids).tolist()
                ident = self._queue.pop(0)
            (self._deferred if ident in chosen else chosen).append(ident)
        self._deferred = deferred + self._deferred
        return chosen


class _ImageCursor:
    """k images at a time from one identity's shuffled pool, reshuffled when fewer than k remain."""

    def __init__(self, pool: np.ndarray, rng: np.random.Generator) -> None:
        self._pool, self._rng = pool, rng
        self._order: list[int] = []

    def take(self, k: int) -> list[int]:
        if self._pool.size < k:
            return self._rng.choice(self._pool, size=k, replace=True).tolist()
        if len(self._order) < k:
            self._order = self._rng.permutation(self._pool).tolist()
        taken, self._order = self._order[:k], self._order[k:]
        return taken
