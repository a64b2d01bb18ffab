"""The refine stage: a finished CDD student's architecture trained further, nothing pruned or regrown.

Contract (``cdd.refine_from = <CDD student run dir>``, or an ``arch.json`` of kept channels when the stage starts
from the teacher):
- the network starts as that run's full-width student (indicators included), loaded strictly from its
  ``checkpoint.pt`` (final weights, weight averaging applied);
- the channels outside that run's ``arch.json`` kept_channels are zero in every indicator and stay exactly
  zero: their rows and gradients are cleared around every optimizer step, so SGD's momentum and weight
  decay never move them;
- the kept channels, and so the exported architecture and its FLOPs, are the CDD run's; channels kept only
  by rounding (``cdd.round_to``) are trainable, since the deployed network computes them anyway.
The run dir is an ordinary student run (full-width checkpoint + arch.json): `cdd-export` reads it unchanged.
With ``cdd.refine_form = "plain"`` the stage trains the slim network itself instead (the start folded by
`training.plain_fold`, or the teacher sliced to the kept channels); nothing needs holding at zero then, and
the checkpoint holds that slim network, which `cdd-export` reads as the full-width student computing the same.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from training.arch_spec import ArchSpec
from training.checkpoint import load_checkpoint

__all__ = ["RefineError", "RefineSource", "FrozenRows"]

_MATCHED = ("depth", "width", "last_stride", "embedding_dim", "input_size", "num_classes")


class RefineError(ValueError):
    """The run named by ``cdd.refine_from`` is missing, unfinished or does not match this run."""


@dataclass(frozen=True)
class RefineSource:
    """A finished CDD student run: its directory, slim spec (kept channels), full-width weights and final
    metrics."""

    run: Path
    spec: ArchSpec
    state: dict[str, torch.Tensor]
    final: dict

    @classmethod
    def load(cls, run_dir: str | Path, student: ArchSpec, needs_weights: bool = True) -> RefineSource:
        """Read ``run_dir`` and check it against this run's full-width ``student`` spec; raises RefineError
        naming the file, the field, both values and the fix. Without ``needs_weights`` (a start from the
        teacher) ``run_dir`` may also be an ``arch.json`` of kept channels alone (e.g. another pruning
        criterion's choice): no weights and no final metrics then."""
        run = Path(run_dir)
        if run.suffix == ".json" and run.is_file():
            if needs_weights:
                raise RefineError(f"{run}: an arch.json has kept channels but no weights; start from the teacher "
                                  "(cdd.refine_init = \"teacher\") or point cdd.refine_from at a CDD student run")
            spec = ArchSpec.load(run)
            _check_source_spec(spec, student, run)
            return cls(run, spec, {}, {})
        metrics = run / "metrics.json"
        if not metrics.is_file() or "final" not in json.loads(metrics.read_text()):
            raise RefineError(f"{metrics}: the CDD run in cdd.refine_from has not finished (no final metrics); "
                              "train it first (`make train` runs it before the refine stage)")
        spec = ArchSpec.load(run / "arch.json")
        _check_source_spec(spec, student, run / "arch.json")
        state = load_checkpoint(run / "checkpoint.pt", kind="student")["model"]
        return cls(run, spec, state, json.loads(metrics.read_text())["final"])

    def masks(self) -> list[torch.Tensor]:
        """Per block, True for the channels held at zero (not in kept_channels)."""
        out = []
        for (_, p), kept in zip(self.spec.blocks(), self.spec.kept_channels or (), strict=True):
            mask = torch.ones(p, dtype=torch.bool)
            mask[list(kept)] = False
            out.append(mask)
        return out

    def full_width_spec(self) -> ArchSpec:
        return replace(self.spec, kept_channels=None)


def _check_source_spec(spec: ArchSpec, student: ArchSpec, source: Path) -> None:
    if not spec.indicators or spec.kept_channels is None:
        raise RefineError(f"{source}: expected a CDD student (indicators = true, kept_channels set), found "
                          f"indicators = {spec.indicators}, kept_channels "
                          f"{'set' if spec.kept_channels is not None else 'null'}; point cdd.refine_from at a CDD "
                          "student run")
    for name in _MATCHED:
        found, expected = getattr(spec, name), getattr(student, name)
        if (tuple(found) if name == "input_size" else found) != (
                tuple(expected) if name == "input_size" else expected):
            raise RefineError(f"{source}: {name} is {found}, this run's data/model config gives {expected}; "
                              "refine with the CDD run's own data and model settings")


class FrozenRows:
    """Holds the masked indicator rows at exactly zero through optimizer steps."""

    def __init__(self, masks: list[torch.Tensor]) -> None:
        self.masks = masks

    def zero_rows(self, indicator_weights: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for weight, mask in zip(indicator_weights, self.masks, strict=True):
                weight[mask.to(weight.device)] = 0

    def clear_grads(self, indicator_weights: list[torch.Tensor]) -> None:
        for weight, mask in zip(indicator_weights, self.masks, strict=True):
            if weight.grad is not None:
                weight.grad[mask.to(weight.device)] = 0
