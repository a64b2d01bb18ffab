"""The machine stamp of a TensorRT plan: one definition for the exporter that writes it and the backend that
checks it.

A serialised TensorRT engine only runs on the GPU model, compute capability and TensorRT version it was built
with. `machine_stamp` is the dict both sides compare; `export.tensorrt_build` writes it (plus the plan's file,
precision and batch range) as ``manifest.backends["tensorrt"]``, and `serving.backends.tensorrt_backend`
refuses a plan whose `stamp_mismatch` with this machine's stamp is not None. Imports nothing heavy.
"""

from __future__ import annotations

from typing import Any

__all__ = ["STAMP_KEYS", "SUPPORTED_TENSORRT_MAJORS", "machine_stamp", "plan_entry", "stamp_mismatch"]

SUPPORTED_TENSORRT_MAJORS = (10, 11)
"""TensorRT major versions plans are built and served with (the exporter's recipes, ``cdd-serve --check-gpu``)."""

STAMP_KEYS = ("gpu", "compute_capability", "tensorrt")
"""The keys of a machine stamp: GPU name, compute capability "major.minor", TensorRT version."""


def machine_stamp(gpu: str, capability: tuple[int, int], tensorrt_version: str) -> dict[str, str]:
    """The stamp of a machine with GPU ``gpu`` of compute ``capability`` (major, minor) running TensorRT
    ``tensorrt_version``; its keys are STAMP_KEYS."""
    major, minor = capability
    return dict(zip(STAMP_KEYS, (str(gpu), f"{int(major)}.{int(minor)}", str(tensorrt_version)), strict=True))


def _normalise(key: str, value: Any) -> str:
    if key == "compute_capability" and isinstance(value, list | tuple):
        return ".".join(str(part) for part in value)
    return str(value)


def stamp_mismatch(plan: dict[str, Any], here: dict[str, Any]) -> str | None:
    """None when the plan's stamp matches this machine's, else a sentence naming each difference."""
    problems = []
    for key in STAMP_KEYS:
        if key not in plan:
            problems.append(f"the plan's stamp is missing {key!r}")
        elif _normalise(key, plan[key]) != _normalise(key, here.get(key)):
            problems.append(f"{key} is {_normalise(key, plan[key])!r} in the plan, {here.get(key)!r} here")
    return "; ".join(problems) or None


def plan_entry(entry: Any) -> tuple[str, dict[str, Any]]:
    """(plan file, stamp) of a ``manifest.backends["tensorrt"]`` entry: the exporter's flat form
    ``{"file": ..., "gpu": ..., "compute_capability": ..., "tensorrt": ..., ...}`` or
    ``{"file": ..., "stamp": {...}}``. Raises ValueError for anything else."""
    if isinstance(entry, dict):
        stamp = entry.get("stamp", entry)
        if isinstance(stamp, dict):
            return str(entry.get("file", "model.plan")), dict(stamp)
    raise ValueError(
        f"manifest backends['tensorrt'] is {entry!r}; expected {{'file': ..., {', '.join(map(repr, STAMP_KEYS))}: "
        "...}}; re-export the bundle on the serving machine"
    )
