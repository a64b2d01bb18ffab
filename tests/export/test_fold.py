"""Folding BN and the CDD indicator into convolutions: exact known answers and whole-network parity."""

from __future__ import annotations

import pytest
import torch
from tiny_runs import ONE_CHANNEL_BLOCK, TinyRuns
from torch import nn

from export.fold import ChannelAffine, FoldedBlock, FoldedNet, fold_conv_bn, fold_indicator, fold_network
from export.rebuild import build_slim
from export.run_dir import load_run_dir
from training.cost import count_module_cost, deployed_cost


def test_fold_conv_bn_known_answer() -> None:
    """1x1 conv weight 2, BN mean 1, var 4, eps 0, gamma 3, beta 0.5: y = 3 * (2x - 1) / 2 + 0.5 = 3x - 1."""
    conv = nn.Conv2d(1, 1, 1, bias=False)
    bn = nn.BatchNorm2d(1, eps=0.0).eval()
    with torch.no_grad():
        conv.weight.fill_(2.0)
        bn.running_mean.fill_(1.0)
        bn.running_var.fill_(4.0)
        bn.weight.fill_(3.0)
        bn.bias.fill_(0.5)
    folded = fold_conv_bn(conv, bn)
    assert folded.weight.item() == pytest.approx(3.0)
    assert folded.bias.item() == pytest.approx(-1.0)


@pytest.mark.parametrize("kept", [3, 1])
def test_fold_indicator_matches_sequential_application(kept: int) -> None:
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(4, 5, 3, stride=2, padding=1, bias=True)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
        conv.bias.copy_(torch.randn(5, generator=g))
    indicator = torch.randn(kept, 5, 1, 1, generator=g)
    x = torch.randn(2, 4, 9, 7, generator=g)
    merged = fold_indicator(conv, indicator)
    assert merged.weight.shape == (kept, 4, 3, 3) and merged.bias.shape == (kept,)
    with torch.no_grad():
        expected = nn.functional.conv2d(conv(x), indicator)
        torch.testing.assert_close(merged(x), expected, rtol=1e-5, atol=1e-5)


def test_fold_indicator_rejects_width_mismatch() -> None:
    with pytest.raises(ValueError, match="indicator takes 6 channels but the conv before it outputs 5"):
        fold_indicator(nn.Conv2d(4, 5, 1), torch.zeros(2, 6, 1, 1))


@pytest.mark.parametrize("name", ["student18", "student50", "teacher"])
def test_folded_equals_unfolded(tiny_run_dir: TinyRuns, name: str) -> None:
    run = load_run_dir(getattr(tiny_run_dir, name))
    net = build_slim(run)
    folded = fold_network(net)
    x = torch.randn(4, 3, *run.spec.input_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected, found = net(x), folded(x)
    torch.testing.assert_close(found, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


def test_folded_network_is_plain_layers(tiny_run_dir: TinyRuns) -> None:
    run = load_run_dir(tiny_run_dir.student50)
    folded = fold_network(build_slim(run))
    kinds = {type(m) for m in folded.modules()} - {FoldedNet, nn.Sequential}
    assert kinds <= {nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Linear, ChannelAffine, FoldedBlock}
    assert all(m.bias is not None for m in folded.modules() if isinstance(m, nn.Conv2d))
    # Bottleneck body: conv1, relu, conv2 (indicator folded in: p -> kept), relu, conv3.
    body = folded.blocks[ONE_CHANNEL_BLOCK].body
    assert body[2].out_channels == 1 and body[2].bias.shape == (1,) and body[4].in_channels == 1


@pytest.mark.parametrize("name", ["student18", "student50"])
def test_folded_flops_follow_the_cost_convention(tiny_run_dir: TinyRuns, name: str) -> None:
    """Conv2d + Linear MACs of the folded net == training.cost.deployed_cost of the spec."""
    run = load_run_dir(getattr(tiny_run_dir, name))
    folded = fold_network(build_slim(run))
    assert count_module_cost(folded, run.spec.input_size).flops == deployed_cost(run.spec).flops


def test_fold_does_not_modify_the_source(tiny_run_dir: TinyRuns) -> None:
    run = load_run_dir(tiny_run_dir.student18)
    net = build_slim(run)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fold_network(net)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
