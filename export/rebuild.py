"""Rebuild the slim deploy network from a run dir (architecture is data), and its parity reference.

The slim network is built from ``arch.json`` and the full-width checkpoint sliced to the kept channels
(``training.pruning.slice_state_dict``), loaded strictly. Its reference is the full-width network with the
pruned indicator rows set to zero: in eval mode both compute the same function, which the ``rebuild`` gate
checks on real images.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from export.errors import RunDirError
from export.run_dir import RunDir
from training.arch_spec import ArchSpec
from training.models import ReIDNet, build_network
from training.pruning import slice_state_dict, zero_pruned_rows

__all__ = ["build_reference", "build_slim", "load_strict"]


def load_strict(spec: ArchSpec, state: dict[str, torch.Tensor], source: str) -> ReIDNet:
    """Build ``spec`` and load ``state`` strictly, in eval mode. Raises RunDirError naming ``source`` and
    the first mismatching keys/shapes when the weights do not fit the spec."""
    net = build_network(spec)
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k}: spec {tuple(own[k].shape)} vs weights {tuple(state[k].shape)}"
             for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        raise RunDirError(f"{source}: the weights do not match the architecture spec (missing keys {missing[:3]}, "
                          f"unexpected keys {unexpected[:3]}, shape mismatches {wrong[:3]}); arch.json and "
                          "checkpoint.pt must come from the same run")
    net.load_state_dict(state, strict=True)
    return net.eval()


def _full_spec(run: RunDir) -> ArchSpec:
    return replace(run.spec, kept_channels=None)


def build_slim(run: RunDir) -> ReIDNet:
    """The deploy network: ``run.spec`` (slim for a CDD student) with sliced weights, eval mode.

    Raises RunDirError when the kept channels or shapes in arch.json disagree with checkpoint.pt, or when
    the network cannot process an image at the spec's input size."""
    source = f"{run.path / 'arch.json'} + {run.checkpoint_path}"
    load_strict(_full_spec(run), run.state_dict, source)  # full-width shapes first: clearer errors
    try:
        slim_state = slice_state_dict(run.state_dict, run.spec)
    except (ValueError, IndexError, RuntimeError) as exc:
        raise RunDirError(f"{source}: cannot slice the checkpoint to the kept channels of arch.json ({exc})") from exc
    net = load_strict(run.spec, slim_state, source)
    _probe(net, run.spec, source)
    return net


def build_reference(run: RunDir) -> ReIDNet:
    """Full-width network with every pruned indicator row zeroed (eval mode): the slim network's reference."""
    source = f"{run.path / 'arch.json'} + {run.checkpoint_path}"
    return load_strict(_full_spec(run), zero_pruned_rows(run.state_dict, run.spec), source)


def _probe(net: ReIDNet, spec: ArchSpec, source: str) -> None:
    """One forward pass at the spec's input size, so a size the network cannot take fails here, clearly."""
    h, w = spec.input_size
    try:
        with torch.no_grad():
            out = net(torch.zeros(1, 3, h, w))
    except RuntimeError as exc:
        raise RunDirError(f"{source}: the network cannot process input_size {spec.input_size} (height, width): "
                          f"{str(exc)[:200]}; train with a larger input_size") from exc
    if tuple(out.shape) != (1, spec.embedding_dim):
        raise RunDirError(f"{source}: the network outputs shape {tuple(out.shape)}, expected "
                          f"(1, {spec.embedding_dim}) from embedding_dim")
