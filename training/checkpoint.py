"""Atomic checkpoints of a training run, with everything needed to resume exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cdd_common.atomic_file import atomic_path

__all__ = ["CHECKPOINT_SCHEMA_VERSION", "CheckpointError", "save_checkpoint", "load_checkpoint"]

CHECKPOINT_SCHEMA_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or from another schema/kind."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """torch.save ``state`` (plus schema_version) to a temp file in the same dir, then rename over ``path``."""
    with atomic_path(path) as tmp:
        torch.save({"schema_version": CHECKPOINT_SCHEMA_VERSION, **state}, tmp)
    return Path(path)


def load_checkpoint(path: str | Path, kind: str | None = None) -> dict[str, Any]:
    """Load a checkpoint on CPU (weights_only). ``kind`` ("teacher"/"student") is checked when given."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; train it with `cdd-train` (or `make train`)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated/corrupt files
        raise CheckpointError(f"{path}: cannot be read ({type(exc).__name__}: {exc}); delete it and retrain "
                              "or resume from an intact copy") from exc
    version = state.get("schema_version") if isinstance(state, dict) else None
    if version != CHECKPOINT_SCHEMA_VERSION:
        raise CheckpointError(f"{path}: checkpoint schema {version!r}, this build reads "
                              f"{CHECKPOINT_SCHEMA_VERSION}; retrain with this version")
    if kind is not None and state.get("kind") != kind:
        raise CheckpointError(f"{path}: is a {state.get('kind')!r} checkpoint, expected {kind!r}")
    return state
