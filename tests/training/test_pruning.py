"""Pruning threshold, slicing to a slim network, and slim == full-width-with-zeroed-rows."""

import pytest
import torch

from training.arch_spec import ArchSpec
from training.models import build_network
from training.pruning import kept_from_norms, slice_state_dict, zero_pruned_rows


def test_threshold_keeps_strongest_when_all_fall_below():
    assert kept_from_norms(torch.tensor([0.5, 1e-6, 2.0, 0.0])) == [0, 2]
    assert kept_from_norms(torch.tensor([1e-7, 3e-6, 1e-8])) == [1]


def test_round_to_multiple_adds_strongest_pruned_rows():
    norms = torch.tensor([1.0, 1e-7, 0.5, 1e-9, 0.3, 0.2, 1e-8, 0, 1e-6, 0, 0.01, 0])
    # 5 rows pass 1e-5 (0, 2, 4, 5, 10); rounding to 8 adds the 3 strongest pruned rows (8, 1, 6)
    assert kept_from_norms(norms, multiple_of=8) == [0, 1, 2, 4, 5, 6, 8, 10]
    assert len(kept_from_norms(torch.ones(5), multiple_of=8)) == 5  # capped at full width


def test_reset_rows_are_pruned_whatever_their_norm():
    norms = torch.tensor([1.0, 0.5, 1e-7, 0.3])
    reset = torch.tensor([False, True, False, False])
    assert kept_from_norms(norms, reset=reset) == [0, 3]  # 1 is reset, 2 is below the threshold
    assert kept_from_norms(norms, reset=torch.ones(4, dtype=torch.bool)) == [0]  # strongest survives alone


def _perturbed(spec):
    torch.manual_seed(0)
    net = build_network(spec).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        for ind in net.indicators():
            ind.weight.add_(0.2 * torch.randn_like(ind.weight))
    return net


@pytest.mark.parametrize("depth", [18, 50])
def test_slim_equals_full_width_with_zeroed_rows(depth):
    spec = ArchSpec(depth=depth, width=0.25, input_size=(64, 32), indicators=True, num_classes=5)
    full = _perturbed(spec)
    g = torch.Generator().manual_seed(1)
    kept = [sorted(torch.randperm(p, generator=g)[: max(1, p // 3)].tolist()) for _, p in spec.blocks()]
    kept[0] = [3]  # a block reduced to one channel
    slim_spec = spec.with_kept(kept)
    zeroed = build_network(spec).eval()
    zeroed.load_state_dict(zero_pruned_rows(full.state_dict(), slim_spec))
    slim = build_network(slim_spec).eval()
    slim.load_state_dict(slice_state_dict(full.state_dict(), slim_spec), strict=True)
    x = torch.randn(3, 3, 64, 32)
    assert torch.allclose(slim(x), zeroed(x), rtol=1e-5, atol=1e-4)
    assert not torch.allclose(slim(x), full(x), atol=1e-3)  # pruning really changed something
    assert sum(p.numel() for p in slim.parameters()) < sum(p.numel() for p in full.parameters())


def test_slice_rejects_a_state_dict_of_another_architecture():
    spec = ArchSpec(depth=18, width=0.25, input_size=(64, 32), indicators=True)
    other = build_network(ArchSpec(depth=18, width=0.5, input_size=(64, 32), indicators=True)).state_dict()
    slim = spec.with_kept([[0]] * len(spec.blocks()))
    with pytest.raises(ValueError, match="expected full-width indicator"):
        slice_state_dict(other, slim)


@pytest.mark.parametrize("depth", [18, 50])
def test_standard_pruning_keeps_the_largest_l1_filters_of_the_teacher(depth):
    import numpy as np

    from training.arch_spec import ArchSpec
    from training.models.network import ReIDNet
    from training.pruning import l1_kept_channels

    spec = ArchSpec(depth=depth, width=0.25, input_size=(64, 32))
    torch.manual_seed(3)
    state = ReIDNet(spec).state_dict()
    counts = [max(1, p * (b % 4 + 1) // 5) for b, (_, p) in enumerate(spec.blocks())]
    kept = l1_kept_channels(state, spec, counts)
    # the conv that makes a block's inner channels: conv1 of a basic block, conv2 of a bottleneck
    producer = "conv1" if depth == 18 else "conv2"
    for (name, _), count, chosen in zip(spec.blocks(), counts, kept, strict=True):
        filters = state[f"backbone.{name}.{producer}.weight"].numpy()
        l1 = np.abs(filters.reshape(filters.shape[0], -1)).sum(axis=1)
        expected = sorted(np.argsort(-l1, kind="stable")[:count].tolist())
        assert chosen == expected, name
    with pytest.raises(ValueError, match="cannot keep 99"):
        l1_kept_channels(state, spec, [99] + counts[1:])


def test_standard_pruning_ranks_by_l1_not_l2_and_breaks_ties_by_the_lower_index():
    from training.pruning import l1_kept_channels

    spec = ArchSpec(depth=18, width=1 / 16, input_size=(64, 32))  # inner widths 4, 4, 8, 8, 16, 16, 32, 32
    state = {}
    for name, p in spec.blocks():
        weight = torch.zeros(p, 3, 3, 3)  # stands in for the teacher's conv1; only its row norms matter
        weight[0, 0, 0, 0] = 3.0  # L1 3, L2 3
        weight[1, 0, 0, :] = 1.0  # L1 3, L2 1.7: tied with channel 0 by L1, behind it by L2
        weight[2, 0, :, :] = 0.4  # L1 3.6, L2 1.2: first by L1, last of the three by L2
        state[f"backbone.{name}.conv1.weight"] = weight
    assert l1_kept_channels(state, spec, [1] * 8) == [[2]] * 8
    assert l1_kept_channels(state, spec, [2] * 8) == [[0, 2]] * 8  # 0 and 1 tie: the lower index stays
