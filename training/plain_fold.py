"""A CDD student's weights in the plain slim form: each block's 3x3 conv, BN and indicator folded into one conv of
the kept channels and a BN, so the network can be trained further as the slim network itself.

Contract:
- ``fold_to_plain(full_state, spec)`` takes a full-width CDD state_dict whose indicator rows outside
  ``spec.kept_channels`` are zero and returns the state_dict of ``replace(spec, indicators=False)``. In eval
  mode that network computes what the CDD student computes (float rounding aside): the conv before the indicator
  slot becomes ``M diag(gamma / sqrt(var + eps)) W`` for the kept rows ``M`` of the indicator, and its BN is set
  so that, at its running statistics, it adds the folded shift ``M (beta - mean gamma / sqrt(var + eps))`` and
  nothing else. The running statistics it starts with are provisional (the mean is exact, the variance treats
  the channels as independent).
- ``unfold_plain(plain_state, spec)`` is the way back for any plain slim student (``indicators = false`` with
  kept channels): the full-width CDD state_dict of ``replace(spec, indicators = true)`` whose slim network
  computes exactly what the plain one computes (identity rows of the kept channels, zeros elsewhere), so a plain
  run exports like a CDD run.
- ``measure_folded_statistics(net, spec, batches)`` replaces those with the mean and variance the folded convs
  really produce on ``batches`` (the network in eval mode), keeping each BN's eval function unchanged, so that
  training starts with batch statistics close to the running ones.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from training.arch_spec import ArchSpec
from training.pruning import block_prefixes

__all__ = ["fold_to_plain", "measure_folded_statistics", "unfold_plain"]


def _names(spec: ArchSpec) -> tuple[str, str, str]:
    """(conv before the indicator slot, its BN, the conv after the slot)."""
    return ("conv2", "bn2", "conv3") if spec.block_type == "bottleneck" else ("conv1", "bn1", "conv2")


def fold_to_plain(full_state: dict[str, torch.Tensor], spec: ArchSpec, eps: float = 1e-5) -> dict[str, torch.Tensor]:
    """The plain slim state_dict (``indicators = false``) of the CDD student ``full_state`` for ``spec``'s kept
    channels; raises ValueError naming the key when ``full_state`` is not a full-width CDD student of ``spec``."""
    if spec.kept_channels is None or not spec.indicators:
        raise ValueError("fold_to_plain needs a CDD student spec (indicators = true) with kept_channels")
    before, bn, after = _names(spec)
    out = {k: v for k, v in full_state.items() if not k.endswith("indicator.weight")}
    for prefix, (_, p), kept in zip(block_prefixes(spec), spec.blocks(), spec.kept_channels, strict=True):
        key = prefix + "indicator.weight"
        if key not in full_state or tuple(full_state[key].shape[:2]) != (p, p):
            raise ValueError(f"state_dict has no full-width {key!r} of shape ({p}, {p}); it is not a full-width CDD "
                             "student of this spec")
        index = torch.tensor(kept, dtype=torch.long)
        mix = full_state[key].double().flatten(1).index_select(0, index)  # (kept, p)
        weight = full_state[prefix + f"{before}.weight"].double()
        gamma, beta, mean, var = (full_state[prefix + f"{bn}.{n}"].double()
                                  for n in ("weight", "bias", "running_mean", "running_var"))
        scale = gamma / torch.sqrt(var + eps)
        folded = mix * scale  # (kept, p)
        shift = mix @ (beta - mean * scale)
        new_mean, new_var = folded @ mean, (folded ** 2) @ var
        out[prefix + f"{before}.weight"] = torch.einsum("ij,jchw->ichw", folded, weight).float()
        out[prefix + f"{bn}.running_mean"] = new_mean.float()
        out[prefix + f"{bn}.running_var"] = new_var.float()
        out[prefix + f"{bn}.weight"] = torch.sqrt(new_var + eps).float()
        out[prefix + f"{bn}.bias"] = (new_mean + shift).float()
        out[prefix + f"{after}.weight"] = full_state[prefix + f"{after}.weight"].index_select(1, index).clone()
    return out


def measure_folded_statistics(net: nn.Module, spec: ArchSpec, batches: Iterable[torch.Tensor]) -> int:
    """Set the running mean and variance of every folded BN of the plain ``net`` (``spec``, indicators = false,
    as `fold_to_plain` left it) to those of its input over ``batches``, and its affine weights so its eval
    function stays what it was; returns the number of batches seen (ValueError when none). ``net`` is left in
    eval mode."""
    _, bn, _ = _names(spec)
    norms = [net.get_submodule(prefix + bn) for prefix in block_prefixes(spec)]
    sums: list[torch.Tensor | None] = [None] * len(norms)
    squares: list[torch.Tensor | None] = [None] * len(norms)
    count = [0] * len(norms)

    def hook(i: int):
        def record(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0].detach().double()
            s, q = x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3))
            sums[i] = s if sums[i] is None else sums[i] + s
            squares[i] = q if squares[i] is None else squares[i] + q
            count[i] += x.shape[0] * x.shape[2] * x.shape[3]
        return record

    handles = [m.register_forward_pre_hook(hook(i)) for i, m in enumerate(norms)]
    net.eval()
    seen = 0
    try:
        with torch.no_grad():
            for images in batches:
                net(images)
                seen += 1
    finally:
        for handle in handles:
            handle.remove()
    if seen == 0:
        raise ValueError("measure_folded_statistics got no batches")
    for m, s, q, n in zip(norms, sums, squares, count, strict=True):
        assert s is not None and q is not None
        if not torch.allclose(m.weight.detach(), torch.sqrt(m.running_var + m.eps), rtol=1e-4, atol=1e-6):
            raise ValueError("measure_folded_statistics expects the BNs as fold_to_plain left them (weight = "
                             "sqrt(running_var + eps)); measure before training")
        mean = s / n
        var = (q / n - mean * mean).clamp_min(0)
        shift = (m.bias.detach().double() - m.running_mean.double())  # what the BN adds at its running statistics
        m.running_mean.copy_(mean.float())
        m.running_var.copy_(var.float())
        with torch.no_grad():
            m.weight.copy_(torch.sqrt(var + m.eps).float())
            m.bias.copy_((mean + shift).float())
    return seen



def unfold_plain(plain_state: dict[str, torch.Tensor], spec: ArchSpec) -> dict[str, torch.Tensor]:
    """The full-width CDD state_dict (for ``replace(spec, indicators=True, kept_channels=None)``) of the plain
    slim student ``plain_state`` of ``spec`` (indicators = false, kept_channels set); ValueError naming the key
    when ``plain_state`` does not fit ``spec``."""
    if spec.kept_channels is None or spec.indicators:
        raise ValueError("unfold_plain needs a plain slim spec (indicators = false) with kept_channels")
    before, bn, after = _names(spec)
    out = dict(plain_state)
    for prefix, (_, p), kept in zip(block_prefixes(spec), spec.blocks(), spec.kept_channels, strict=True):
        index = torch.tensor(kept, dtype=torch.long)
        weight = plain_state[prefix + f"{before}.weight"]
        if weight.shape[0] != len(kept):
            raise ValueError(f"{prefix}{before}.weight has {weight.shape[0]} output channels, the spec keeps "
                             f"{len(kept)}; the state_dict is not this plain slim student's")
        full = weight.new_zeros((p, *weight.shape[1:]))
        full[index] = weight
        out[prefix + f"{before}.weight"] = full
        for name, fill in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
            value = plain_state[prefix + f"{bn}.{name}"]
            widened = value.new_full((p,), fill)
            widened[index] = value
            out[prefix + f"{bn}.{name}"] = widened
        rows = weight.new_zeros((p, p, 1, 1))
        rows[index, index] = 1.0
        out[prefix + "indicator.weight"] = rows
        columns = plain_state[prefix + f"{after}.weight"]
        wide = columns.new_zeros((columns.shape[0], p, *columns.shape[2:]))
        wide[:, index] = columns
        out[prefix + f"{after}.weight"] = wide
    return out
