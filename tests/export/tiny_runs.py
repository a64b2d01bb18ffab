"""Builders of real tiny run dirs and a tiny Market-1501 image folder for the export tests.

``build_tiny_runs`` writes, per the run dir contract (arch.json, checkpoint.pt, config.json, metrics.json):
- ``student18``: ResNet-18 width 0.25 CDD student, ``student50``: ResNet-50 width 0.125 CDD student. Both
  have random non-identity indicators, random BN statistics and affine parameters, several pruned rows
  per block, and one block reduced to a single channel (``ONE_CHANNEL_BLOCK``).
- ``teacher``: ResNet-50 width 0.125 without indicators (the students' ``cdd.teacher_run``).
Inputs are 64x32 so every network runs in milliseconds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from training.arch_spec import ArchSpec
from training.models import build_network

INPUT_SIZE = (64, 32)
EMBEDDING_DIM = 16
ONE_CHANNEL_BLOCK = 2
"""Index (forward order) of the block each student keeps exactly one inner channel of."""
MEAN = [0.5, 0.4, 0.3]
STD = [0.25, 0.2, 0.3]


@dataclass(frozen=True)
class TinyRuns:
    student18: Path
    student50: Path
    teacher: Path
    data_root: Path


def _write_jpeg(path: Path, rng: np.random.Generator, pid: int) -> None:
    """A structured, identity-dependent image (colour blocks + noise) at a size unlike the input size."""
    height, width = int(rng.integers(90, 140)), int(rng.integers(40, 70))
    base = np.zeros((height, width, 3), dtype=np.float64)
    colours = np.random.default_rng(pid).uniform(20, 235, size=(3, 3))
    for band, colour in enumerate(colours):
        base[band * height // 3 : (band + 1) * height // 3] = colour
    pixels = np.clip(base + rng.normal(0, 25, size=base.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=90)


def make_market_folder(root: Path, seed: int = 0) -> Path:
    """Market-1501 layout: 3 identities x 2 cameras in train, 3 query and 6 gallery images."""
    rng = np.random.default_rng(seed)
    for folder, pids, per_cam in (("bounding_box_train", (1, 2, 3), 1), ("query", (4, 5, 6), 0),
                                  ("bounding_box_test", (4, 5, 6), 1)):
        for pid in pids:
            for cam in range(1, 2 + per_cam):
                _write_jpeg(root / folder / f"{pid:04d}_c{cam}s1_{pid * 100 + cam:06d}_00.jpg", rng, pid)
    return root


def _randomize(net: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """A state_dict with non-trivial BN statistics/affines and non-identity indicators."""
    g = torch.Generator().manual_seed(seed)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    for key, value in state.items():
        if not value.is_floating_point():
            continue
        if key.endswith("running_mean"):
            value.copy_(torch.randn(value.shape, generator=g) * 0.2)
        elif key.endswith("running_var"):
            value.copy_(torch.rand(value.shape, generator=g) + 0.5)
        elif ".bn" in key and key.endswith(".weight") or "downsample.1.weight" in key:
            value.copy_(torch.rand(value.shape, generator=g) * 0.8 + 0.4)
        elif key.endswith(".bias"):
            value.copy_(torch.randn(value.shape, generator=g) * 0.1)
        elif key.endswith("indicator.weight"):
            value.add_(torch.randn(value.shape, generator=g) * 0.15)
    return state


def _kept(spec: ArchSpec, seed: int) -> list[list[int]]:
    """Keep a random ~60% of each block's inner channels; one block keeps a single channel."""
    g = torch.Generator().manual_seed(seed)
    kept = []
    for index, (_, p) in enumerate(spec.blocks()):
        count = 1 if index == ONE_CHANNEL_BLOCK else max(2, (p * 3) // 5)
        kept.append(sorted(torch.randperm(p, generator=g)[:count].tolist()))
    return kept


def write_run_dir(path: Path, full: ArchSpec, kind: str, data_root: Path, teacher_run: Path | None,
                  seed: int) -> Path:
    """A run dir per the contract. A student's pruned indicator rows are tiny but not zero (decayed below
    the pruning threshold, as after training), so the rebuild gate's zeroing is exercised."""
    path.mkdir(parents=True, exist_ok=True)
    state = _randomize(build_network(full), seed)
    deploy = full
    if kind == "student":
        deploy = full.with_kept(_kept(full, seed))
        for prefix, kept in zip([f"backbone.{n}." for n, _ in full.blocks()], deploy.kept_channels, strict=True):
            weight = state[prefix + "indicator.weight"]
            dropped = sorted(set(range(weight.shape[0])) - set(kept))
            weight[dropped] *= 1e-6
    deploy.save(path / "arch.json")
    torch.save({"schema_version": 1, "kind": kind, "model": state, "arch": full.to_dict(), "epoch": 3},
               path / "checkpoint.pt")
    config = {"data": {"dataset": "market1501", "root": str(data_root), "mean": MEAN, "std": STD}}
    if teacher_run is not None:
        config["cdd"] = {"teacher_run": str(teacher_run)}
    (path / "config.json").write_text(json.dumps(config))
    (path / "metrics.json").write_text(json.dumps({"final": {"mAP": 12.5, "rank1": 30.0}}))
    return path


def build_tiny_runs(root: Path) -> TinyRuns:
    """Write the market folder, the teacher and both students under ``root``."""
    data_root = make_market_folder(root / "market")
    r50 = ArchSpec(depth=50, width=0.125, embedding_dim=EMBEDDING_DIM, num_classes=3, input_size=INPUT_SIZE)
    r18 = ArchSpec(depth=18, width=0.25, embedding_dim=EMBEDDING_DIM, num_classes=3, input_size=INPUT_SIZE,
                   last_stride=2, indicators=True)
    teacher = write_run_dir(root / "teacher", r50, "teacher", data_root, None, seed=1)
    return TinyRuns(
        student18=write_run_dir(root / "student18", r18, "student", data_root, teacher, seed=2),
        student50=write_run_dir(root / "student50", replace(r50, indicators=True), "student", data_root, teacher,
                                seed=3),
        teacher=teacher,
        data_root=data_root,
    )
