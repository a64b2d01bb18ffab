"""Pruning after CDD training: pick surviving indicator rows, and slice full-width weights to a slim net.

Pure functions: ``kept_from_norms`` (threshold, keep at least one, optional rounding up to a multiple),
``kept_channels`` (over a whole network), ``slice_state_dict`` (full-width state_dict -> slim state_dict for
the spec's kept channels).
"""

from __future__ import annotations

import torch

from training.arch_spec import ArchSpec

__all__ = ["kept_from_norms", "kept_channels", "l1_kept_channels", "slice_state_dict", "slice_teacher_state",
           "block_prefixes", "zero_pruned_rows"]


def kept_from_norms(norms: torch.Tensor, threshold: float = 1e-5, multiple_of: int = 1,
                    reset: torch.Tensor | None = None) -> list[int]:
    """Sorted indices of rows whose L2 norm is >= ``threshold`` and that are not in the boolean ``reset``
    mask (the CDD reset set); the strongest row survives if none does.

    ``multiple_of`` > 1 rounds the kept count UP to a multiple (adding the strongest pruned rows), capped at
    the full width, for hardware-friendly shapes."""
    norms = norms.detach().float().cpu()
    alive = norms >= threshold
    if reset is not None:
        alive &= ~reset.detach().cpu()
    keep = alive.nonzero().flatten().tolist()
    if not keep:
        keep = [int(norms.argmax())]
    if multiple_of > 1:
        target = min(len(norms), -(-len(keep) // multiple_of) * multiple_of)
        order = [i for i in norms.argsort(descending=True).tolist() if i not in set(keep)]
        keep = keep + order[: target - len(keep)]
    return sorted(keep)


def block_prefixes(spec: ArchSpec) -> list[str]:
    """State-dict prefixes of each block in forward order, e.g. ``backbone.layer3.4.``."""
    return [f"backbone.{name}." for name, _ in spec.blocks()]


def kept_channels(indicator_weights: list[torch.Tensor], threshold: float = 1e-5, multiple_of: int = 1,
                  reset_masks: list[torch.Tensor] | None = None) -> list[list[int]]:
    """Per-block kept indices from full-width indicator weights (p, p[, 1, 1]) in forward order; rows in
    ``reset_masks`` (one boolean mask per block) are pruned whatever their norm."""
    masks = reset_masks if reset_masks is not None else [None] * len(indicator_weights)
    return [kept_from_norms(w.flatten(1).norm(dim=1), threshold, multiple_of, m)
            for w, m in zip(indicator_weights, masks, strict=True)]


def _next_conv(spec: ArchSpec) -> str:
    return "conv3" if spec.block_type == "bottleneck" else "conv2"


def slice_state_dict(full_state: dict[str, torch.Tensor], spec: ArchSpec) -> dict[str, torch.Tensor]:
    """Slice a FULL-WIDTH student state_dict to ``spec.kept_channels``: indicator rows and the input
    channels of the conv after the indicator. Other tensors are shared unchanged. Raises ValueError when the
    state_dict does not match the spec (names the key, expected and found shapes)."""
    if spec.kept_channels is None:
        return dict(full_state)
    out = dict(full_state)
    nxt = _next_conv(spec)
    for prefix, (name, p), kept in zip(block_prefixes(spec), spec.blocks(), spec.kept_channels, strict=True):
        ind_key, conv_key = prefix + "indicator.weight", prefix + f"{nxt}.weight"
        for key in (ind_key, conv_key):
            if key not in full_state:
                raise ValueError(f"state_dict has no {key!r}; it is not a full-width CDD student of this spec")
        ind, conv = full_state[ind_key], full_state[conv_key]
        if ind.shape[0] != p or ind.shape[1] != p or conv.shape[1] != p:
            raise ValueError(f"block {name}: expected full-width indicator ({p}, {p}) and {nxt} input {p}, found "
                             f"{tuple(ind.shape[:2])} and {conv.shape[1]}; the checkpoint is already slim or from "
                             "another architecture")
        index = torch.tensor(kept, dtype=torch.long)
        out[ind_key] = ind.index_select(0, index).clone()
        out[conv_key] = conv.index_select(1, index).clone()
    return out


def zero_pruned_rows(full_state: dict[str, torch.Tensor], spec: ArchSpec) -> dict[str, torch.Tensor]:
    """Full-width state_dict with every non-kept indicator row set to zero (the reference for slim parity)."""
    out = dict(full_state)
    if spec.kept_channels is None:
        return out
    for prefix, (_, p), kept in zip(block_prefixes(spec), spec.blocks(), spec.kept_channels, strict=True):
        key = prefix + "indicator.weight"
        mask = torch.zeros(p, dtype=torch.bool)
        mask[list(kept)] = True
        weight = out[key].clone()
        weight[~mask] = 0
        out[key] = weight
    return out


def slice_teacher_state(teacher_state: dict[str, torch.Tensor], spec: ArchSpec) -> dict[str, torch.Tensor]:
    """A plain teacher's state_dict sliced to the plain slim network ``spec`` (indicator-free, with
    ``kept_channels``): the conv before each block's indicator slot and its BN keep the kept output
    channels, the conv after it the kept inputs (prune-then-distill initialisation)."""
    if spec.kept_channels is None or spec.indicators:
        raise ValueError("slice_teacher_state needs a plain (indicators=false) spec with kept_channels")
    out = dict(teacher_state)
    before, bn = ("conv2", "bn2") if spec.block_type == "bottleneck" else ("conv1", "bn1")
    nxt = _next_conv(spec)
    for prefix, kept in zip(block_prefixes(spec), spec.kept_channels, strict=True):
        index = torch.tensor(kept, dtype=torch.long)
        out[prefix + f"{before}.weight"] = teacher_state[prefix + f"{before}.weight"].index_select(0, index).clone()
        for name in ("weight", "bias", "running_mean", "running_var"):
            key = prefix + f"{bn}.{name}"
            out[key] = teacher_state[key].index_select(0, index).clone()
        out[prefix + f"{nxt}.weight"] = teacher_state[prefix + f"{nxt}.weight"].index_select(1, index).clone()
    return out


def l1_kept_channels(teacher_state: dict[str, torch.Tensor], spec: ArchSpec, counts: list[int]) -> list[list[int]]:
    """Per block, the ``counts[b]`` inner channels a standard criterion keeps: the largest L1 norms of the
    teacher's filters that produce them (the conv before the indicator slot: conv2 of a bottleneck, conv1 of a
    basic block), as sorted indices (ties broken by the lower index). The "standard pruning" baseline."""
    before = "conv2" if spec.block_type == "bottleneck" else "conv1"
    kept = []
    for prefix, (name, p), count in zip(block_prefixes(spec), spec.blocks(), counts, strict=True):
        weight = teacher_state[prefix + f"{before}.weight"]
        if weight.shape[0] != p or not 1 <= count <= p:
            raise ValueError(f"block {name}: cannot keep {count} of the teacher's {weight.shape[0]} filters "
                             f"(full inner width {p}); the counts must come from a spec of the same architecture")
        norms = weight.detach().float().abs().flatten(1).sum(dim=1)
        order = sorted(range(p), key=lambda c: (-float(norms[c]), c))
        kept.append(sorted(order[:count]))
    return kept
