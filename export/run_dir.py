"""Read a training run dir (the artifact written by ``cdd-train``) and check its files agree.

A run dir holds::

    arch.json        ArchSpec of the network to deploy (a student's kept channels, or a teacher)
    checkpoint.pt    {"schema_version": 1, "kind": "teacher"|"student", "model": FULL-WIDTH state_dict,
                      "arch": full-width ArchSpec dict, "epoch": int, ...}, loaded with weights_only=True;
                     a plain slim student (indicators=false with kept channels, arch.json the same) is read as
                     the full-width CDD student computing the same (`training.plain_fold.unfold_plain`)
    config.json      resolved training config (export reads data.mean/std/dataset/root, cdd.teacher_run)
    metrics.json     {"final": {"mAP": ..., "rank1": ..., ...}, ...}
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from cdd_common.json_document import read_json_object
from export.errors import RunDirError
from serving.bundle import sha256_file
from training.arch_spec import ArchSpec, ArchSpecError
from training.plain_fold import unfold_plain

__all__ = ["CHECKPOINT_SCHEMA_VERSION", "RUN_KINDS", "RunDir", "load_run_dir"]

CHECKPOINT_SCHEMA_VERSION = 1
RUN_KINDS = ("teacher", "student")
_SHARED_FIELDS = ("depth", "width", "last_stride", "embedding_dim", "input_size", "indicators")
_RETRAIN = "re-run `cdd-train` with this version to write a current run dir"
_WRITTEN_BY_TRAIN = "it is written by `cdd-train` into the run dir; " + _RETRAIN


@dataclass(frozen=True)
class RunDir:
    """A validated run dir. ``spec`` is the deploy spec from arch.json (``num_classes`` forced to 0);
    ``state_dict`` is the full-width model without the ID classifier; ``mean``/``std`` are 0..1-scale RGB."""

    path: Path
    kind: str
    spec: ArchSpec
    state_dict: dict[str, torch.Tensor]
    epoch: int
    config: dict[str, Any]
    metrics: dict[str, Any]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    dataset: str
    data_root: str
    teacher_run: Path | None
    checkpoint_path: Path
    checkpoint_sha256: str


def _load_spec(path: Path) -> ArchSpec:
    if not path.is_file():
        raise RunDirError(f"{path}: architecture spec not found; it is written by `cdd-train` into the run dir")
    try:
        return ArchSpec.load(path)
    except ArchSpecError as exc:
        raise RunDirError(f"{exc}; {_RETRAIN}") from exc


def _load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise RunDirError(f"{path}: checkpoint not found; it is written by `cdd-train` into the run dir")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types (pickle, zip, weights-only unpickler)
        raise RunDirError(f"{path}: cannot be read as a weights-only checkpoint ({type(exc).__name__}: "
                          f"{str(exc)[:200]}); {_RETRAIN}") from exc
    if not isinstance(ckpt, dict) or "schema_version" not in ckpt:
        raise RunDirError(f"{path}: no schema_version; it is from an older cdd-train (expected schema "
                          f"{CHECKPOINT_SCHEMA_VERSION}); {_RETRAIN}")
    if ckpt["schema_version"] != CHECKPOINT_SCHEMA_VERSION:
        raise RunDirError(f"{path}: schema_version {ckpt['schema_version']!r}, this cdd-export reads "
                          f"{CHECKPOINT_SCHEMA_VERSION}; {_RETRAIN}")
    missing = [k for k in ("kind", "model", "arch", "epoch") if k not in ckpt]
    if missing:
        raise RunDirError(f"{path}: missing keys {missing}; {_RETRAIN}")
    if not isinstance(ckpt["model"], dict) or not isinstance(ckpt["arch"], dict):
        raise RunDirError(f"{path}: 'model' must be a state_dict and 'arch' an ArchSpec dict; {_RETRAIN}")
    if ckpt["kind"] not in RUN_KINDS:
        raise RunDirError(f"{path}: kind {ckpt['kind']!r}, expected one of {RUN_KINDS}")
    return ckpt


def _check_specs(deploy: ArchSpec, full: ArchSpec, kind: str, arch_path: Path, ckpt_path: Path) -> None:
    if full.kept_channels is not None:
        raise RunDirError(f"{ckpt_path}: 'arch' has kept_channels; the checkpoint must hold the full-width "
                          f"model; {_RETRAIN}")
    for name in _SHARED_FIELDS:
        a, b = getattr(deploy, name), getattr(full, name)
        if a != b:
            raise RunDirError(f"{arch_path}: {name} is {a!r} but {ckpt_path} was trained with {b!r}; "
                              "arch.json and checkpoint.pt come from different runs")
    if kind == "student" and not deploy.indicators:
        raise RunDirError(f"{arch_path}: a student run needs indicators=true, found false")
    if kind == "teacher" and (deploy.indicators or deploy.kept_channels is not None):
        raise RunDirError(f"{arch_path}: a teacher run has indicators=false and kept_channels=null, found "
                          f"indicators={deploy.indicators}, kept_channels "
                          f"{'set' if deploy.kept_channels is not None else 'null'}")


def _config_field(config: dict[str, Any], dotted: str, path: Path) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise RunDirError(f"{path}: required field {dotted!r} is missing; {_RETRAIN}")
        node = node[part]
    return node


def _rgb_triplet(value: Any, name: str, path: Path, positive: bool) -> tuple[float, float, float]:
    ok = isinstance(value, list | tuple) and len(value) == 3 and all(isinstance(v, int | float) for v in value)
    if not ok or (positive and min(value) <= 0):
        raise RunDirError(f"{path}: {name} must be 3 numbers on the 0..1 scale{' (> 0)' if positive else ''}, "
                          f"found {value!r}")
    return (float(value[0]), float(value[1]), float(value[2]))


def load_run_dir(path: str | Path) -> RunDir:
    """Read and cross-check a run dir. Raises RunDirError naming the file, what was expected and the fix."""
    root = Path(path)
    if not root.is_dir():
        raise RunDirError(f"{root}: run dir not found; train one with `cdd-train` and pass its output dir")
    arch_path, ckpt_path = root / "arch.json", root / "checkpoint.pt"
    config_path, metrics_path = root / "config.json", root / "metrics.json"
    spec = _load_spec(arch_path)
    ckpt = _load_checkpoint(ckpt_path)
    try:
        full = ArchSpec.from_dict(dict(ckpt["arch"]), source=f"{ckpt_path} 'arch'")
    except (ArchSpecError, TypeError) as exc:
        raise RunDirError(f"{exc}; {_RETRAIN}") from exc
    model = dict(ckpt["model"])
    if ckpt["kind"] == "student" and not full.indicators and full.kept_channels is not None:
        # a plain slim student (prune-then-distill, or a refine stage in the plain form): the same network
        # as a full-width CDD student with identity rows for its kept channels, which is what export reads
        if spec != full:
            raise RunDirError(f"{arch_path}: differs from the plain slim network in {ckpt_path} ('arch'); "
                              "arch.json and checkpoint.pt come from different runs")
        model = unfold_plain(model, full)
        spec, full = replace(spec, indicators=True), replace(full, indicators=True, kept_channels=None)
    _check_specs(spec, full, ckpt["kind"], arch_path, ckpt_path)
    config = read_json_object(config_path, RunDirError, "resolved config", _WRITTEN_BY_TRAIN)
    metrics = read_json_object(metrics_path, RunDirError, "metrics", _WRITTEN_BY_TRAIN)
    if not isinstance(metrics.get("final"), dict):
        raise RunDirError(f"{metrics_path}: no 'final' metrics object; it is written when training ends")
    teacher_run = None
    if ckpt["kind"] == "student":
        teacher_run = Path(str(_config_field(config, "cdd.teacher_run", config_path)))
    state = {k: v for k, v in model.items() if not k.startswith("head.classifier.")}
    return RunDir(
        path=root,
        kind=ckpt["kind"],
        spec=replace(spec, num_classes=0),
        state_dict=state,
        epoch=int(ckpt["epoch"]),
        config=config,
        metrics=dict(metrics["final"]),
        mean=_rgb_triplet(_config_field(config, "data.mean", config_path), "data.mean", config_path, False),
        std=_rgb_triplet(_config_field(config, "data.std", config_path), "data.std", config_path, True),
        dataset=str(_config_field(config, "data.dataset", config_path)),
        data_root=str(_config_field(config, "data.root", config_path)),
        teacher_run=teacher_run,
        checkpoint_path=ckpt_path,
        checkpoint_sha256=sha256_file(ckpt_path),
    )
