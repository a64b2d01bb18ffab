"""P x K batch structure, epoch determinism and data-parallel sharding of the identity sampler."""

from __future__ import annotations

import pytest

from training.data.samplers import IdentityBalancedBatchSampler

# 10 identities with 1..10 images each (55 images): small identities force sampling with replacement.
LABELS = [ident for ident in range(10) for _ in range(ident + 1)]


def test_batches_are_p_identities_times_k_images() -> None:
    sampler = IdentityBalancedBatchSampler(LABELS, p=4, k=3, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 55 // 12
    for batch in batches:
        assert len(batch) == 12
        groups = [batch[i : i + 3] for i in range(0, 12, 3)]
        identities = [{LABELS[i] for i in group} for group in groups]
        assert all(len(ids) == 1 for ids in identities), "each k-group must hold one identity"
        assert len(set.union(*identities)) == 4, "the p identities of a batch must be distinct"
        for group in groups:
            if LABELS[group[0]] >= 3:  # identity with >= k images: no repeats inside its group
                assert len(set(group)) == 3


def test_identities_are_covered_evenly_over_an_epoch() -> None:
    sampler = IdentityBalancedBatchSampler([i for i in range(20) for _ in range(8)], p=5, k=4, seed=1)
    counts = {}
    for batch in sampler:
        for index in batch[::4]:
            counts[index // 8] = counts.get(index // 8, 0) + 1
    assert len(sampler) == 8 and sorted(counts) == list(range(20))
    assert max(counts.values()) - min(counts.values()) <= 1


def test_set_epoch_is_deterministic_and_reshuffles() -> None:
    first = IdentityBalancedBatchSampler(LABELS, p=4, k=3, seed=5)
    second = IdentityBalancedBatchSampler(LABELS, p=4, k=3, seed=5)
    first.set_epoch(2)
    second.set_epoch(2)
    assert list(first) == list(second)
    assert list(first) == list(first), "iterating twice in the same epoch repeats it"
    epoch_two = list(first)
    first.set_epoch(3)
    assert list(first) != epoch_two
    assert list(IdentityBalancedBatchSampler(LABELS, p=4, k=3, seed=6)) != list(
        IdentityBalancedBatchSampler(LABELS, p=4, k=3, seed=5))


@pytest.mark.parametrize("drop_last", [True, False])
def test_ranks_get_disjoint_equal_shares_of_one_epoch(drop_last: bool) -> None:
    labels = [i for i in range(12) for _ in range(6)]  # 72 images, p*k = 8 -> 9 global batches
    world = 4
    shares = []
    for rank in range(world):
        sampler = IdentityBalancedBatchSampler(labels, p=4, k=2, seed=3, rank=rank, world_size=world,
                                               drop_last=drop_last)
        sampler.set_epoch(1)
        shares.append(list(sampler))
    expected = 2 if drop_last else 3
    assert [len(s) for s in shares] == [expected] * world
    full = IdentityBalancedBatchSampler(labels, p=4, k=2, seed=3, world_size=1)
    full.set_epoch(1)
    reference = list(full)  # first 9 batches of the same epoch stream
    interleaved = [shares[b % world][b // world] for b in range(expected * world)]
    shared = min(len(reference), len(interleaved))
    assert interleaved[:shared] == reference[:shared], "rank r must hold global batches r, r + world, ..."


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="p=11 identities per batch but the labels hold only 10"):
        IdentityBalancedBatchSampler(LABELS, p=11, k=2, seed=0)
    with pytest.raises(ValueError, match="rank"):
        IdentityBalancedBatchSampler(LABELS, p=2, k=2, seed=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="non-empty"):
        IdentityBalancedBatchSampler([], p=1, k=1, seed=0)
