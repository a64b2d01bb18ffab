"""Fold BatchNorm and the CDD indicator into the convolutions: the deployed network is plain layers.

Per conv + BN (eval statistics): ``W' = W * s``, ``b' = beta - mean * s`` with ``s = gamma / sqrt(var + eps)``.
The indicator (a bias-free 1x1 conv ``M``, shape (kept, p)) follows the BN in a purely linear slot, so it
folds into the conv before it: ``W'' = M @ W'`` (over output channels), ``b'' = M @ b'``. A block reduced to
one channel gives a (1, c, k, k) weight and a (1,) bias. The head's pooled BN sits before a ReLU and stays
a per-channel affine; its embedding BN folds into the Linear. Folding runs in float64, stored as float32.
"""

from __future__ import annotations

import torch
from torch import nn

from training.models import ReIDNet
from training.models.blocks import BasicBlock, Bottleneck

__all__ = ["ChannelAffine", "FoldedBlock", "FoldedNet", "fold_conv_bn", "fold_indicator", "fold_network"]


class ChannelAffine(nn.Module):
    """``x * scale + shift`` per channel of a (B, C) tensor: an eval-mode BatchNorm1d."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale.detach().float().clone())
        self.register_buffer("shift", shift.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class FoldedBlock(nn.Module):
    """Residual block of plain layers: ``relu(body(x) + shortcut(x))``; ``body`` is Conv(+bias) and ReLU
    modules ending in a Conv; ``shortcut`` is a Conv(+bias) or None (identity)."""

    def __init__(self, body: nn.Sequential, shortcut: nn.Conv2d | None) -> None:
        super().__init__()
        self.body = body
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        return torch.relu(self.body(x) + identity)


class FoldedNet(nn.Module):
    """Normalised images (B, 3, H, W) -> embeddings (B, D), not L2-normalised: the same function as the
    :class:`ReIDNet` it was folded from, in eval mode."""

    def __init__(self, stem: nn.Conv2d, maxpool: nn.Module, blocks: list[FoldedBlock], pool_affine: ChannelAffine,
                 embed: nn.Linear) -> None:
        super().__init__()
        self.stem = stem
        self.maxpool = maxpool
        self.blocks = nn.Sequential(*blocks)
        self.pool_affine = pool_affine
        self.embed = embed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.maxpool(torch.relu(self.stem(x))))
        return self.embed(torch.relu(self.pool_affine(x.mean(dim=(2, 3)))))


def _bn_scale_shift(bn: nn.BatchNorm1d | nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"{bn}: no running statistics to fold; the network must track them (eval mode)")
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    return scale, beta - mean * scale


def _conv_like(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    out = nn.Conv2d(weight.shape[1] * conv.groups, weight.shape[0], conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, bias=True)
    with torch.no_grad():
        out.weight.copy_(weight.float())
        out.bias.copy_(bias.float())
    return out


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Conv2d followed by eval-mode BN -> one Conv2d with bias (output channels = ``bn`` channels)."""
    scale, shift = _bn_scale_shift(bn)
    weight = conv.weight.detach().double() * scale.view(-1, 1, 1, 1)
    bias = shift if conv.bias is None else shift + conv.bias.detach().double() * scale
    return _conv_like(conv, weight, bias)


def fold_indicator(conv: nn.Conv2d, indicator_weight: torch.Tensor) -> nn.Conv2d:
    """Conv2d with bias (c_in -> p) followed by a bias-free 1x1 conv ``indicator_weight`` (kept, p[, 1, 1])
    -> one Conv2d (c_in -> kept) with bias; kept may be 1. Raises ValueError on a width mismatch."""
    mix = indicator_weight.detach().double().reshape(indicator_weight.shape[0], -1)
    if mix.shape[1] != conv.out_channels:
        raise ValueError(f"indicator takes {mix.shape[1]} channels but the conv before it outputs "
                         f"{conv.out_channels}")
    weight = torch.einsum("kp,pchw->kchw", mix, conv.weight.detach().double())
    bias = mix @ conv.bias.detach().double() if conv.bias is not None else torch.zeros(mix.shape[0])
    return _conv_like(conv, weight, bias.reshape(mix.shape[0]))


def _fold_block(block: BasicBlock | Bottleneck) -> FoldedBlock:
    if isinstance(block, Bottleneck):
        pairs = [(block.conv1, block.bn1), (block.conv2, block.bn2), (block.conv3, block.bn3)]
        inner = 1  # the indicator follows conv2 + bn2
    else:
        pairs = [(block.conv1, block.bn1), (block.conv2, block.bn2)]
        inner = 0  # the indicator follows conv1 + bn1
    convs = [fold_conv_bn(conv, bn) for conv, bn in pairs]
    if block.indicator is not None:
        convs[inner] = fold_indicator(convs[inner], block.indicator.weight)
    layers: list[nn.Module] = []
    for conv in convs[:-1]:
        layers += [conv, nn.ReLU()]
    layers.append(convs[-1])
    shortcut = None
    if block.downsample is not None:
        conv, bn = block.downsample[0], block.downsample[1]
        shortcut = fold_conv_bn(conv, bn)
    return FoldedBlock(nn.Sequential(*layers), shortcut)


def fold_network(net: ReIDNet) -> FoldedNet:
    """Fold every BN and indicator of ``net`` (its eval-mode function) into a new plain :class:`FoldedNet`
    (eval mode, float32). ``net`` is not modified; its ID classifier is dropped."""
    backbone, head = net.backbone, net.head
    stem = fold_conv_bn(backbone.conv1, backbone.bn1)
    blocks = [_fold_block(b) for b in backbone.blocks()]
    pool_scale, pool_shift = _bn_scale_shift(head.bn_pool)
    embed_scale, embed_shift = _bn_scale_shift(head.bn_embed)
    embed = nn.Linear(head.embed.in_features, head.embed.out_features, bias=True)
    with torch.no_grad():
        weight = head.embed.weight.detach().double() * embed_scale.view(-1, 1)
        bias = embed_shift if head.embed.bias is None else embed_shift + head.embed.bias.detach().double() * embed_scale
        embed.weight.copy_(weight.float())
        embed.bias.copy_(bias.float())
    maxpool = nn.MaxPool2d(backbone.maxpool.kernel_size, backbone.maxpool.stride, backbone.maxpool.padding)
    folded = FoldedNet(stem, maxpool, blocks, ChannelAffine(pool_scale, pool_shift), embed)
    return folded.eval()
