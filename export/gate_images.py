"""Real images for the parity gates (query + gallery) and for INT8 calibration (train), as uint8 arrays.

Images go through the training evaluation path up to the graph input: ``load_rgb`` then ``resize_uint8``
(PIL bilinear stretch to the input size), exactly what serving feeds the exported graph.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

from export.errors import RunDirError
from training.data.layouts import load_dataset
from training.data.records import DatasetSplits, Record
from training.data.transforms import ImageLoadError, load_rgb, resize_uint8

__all__ = ["calibration_images", "gate_images", "load_images"]


def load_images(records: Sequence[Record], size_hw: tuple[int, int]) -> np.ndarray:
    """uint8 (N, H, W, 3) RGB pixels of ``records`` resized to ``size_hw`` (height, width).
    Raises RunDirError naming the unreadable file."""
    try:
        return np.stack([resize_uint8(load_rgb(r.path, size_hw), size_hw) for r in records])
    except ImageLoadError as exc:
        raise RunDirError(f"{exc}; the gates read real images from the dataset in config.json") from exc


def _sample(records: Sequence[Record], count: int, seed: int) -> list[Record]:
    ordered = sorted(records, key=lambda r: r.path)
    if len(ordered) <= count:
        return ordered
    return sorted(random.Random(seed).sample(ordered, count), key=lambda r: r.path)


def _splits(dataset: str, root: str) -> DatasetSplits:
    try:
        return load_dataset(dataset, root)
    except (FileNotFoundError, ValueError) as exc:
        raise RunDirError(f"config.json data.dataset={dataset!r}, data.root={root!r}: {exc}; export reads real "
                          "images from the dataset the run was trained on (paths relative to the working "
                          "directory)") from exc


def gate_images(dataset: str, root: str, size_hw: tuple[int, int], count: int, seed: int) -> np.ndarray:
    """Up to ``count`` query + gallery images (seeded sample), uint8 (N, H, W, 3). Raises RunDirError when
    the dataset cannot be listed or holds no query/gallery image."""
    splits = _splits(dataset, root)
    records = list({r.path: r for r in [*splits.query, *splits.gallery]}.values())
    if not records:
        raise RunDirError(f"dataset {dataset!r} at {root!r} has no query or gallery image for the parity gates")
    return load_images(_sample(records, count, seed), size_hw)


def calibration_images(dataset: str, root: str, size_hw: tuple[int, int], count: int, seed: int) -> np.ndarray:
    """Up to ``count`` training images (seeded sample), uint8 (N, H, W, 3), for INT8 calibration."""
    splits = _splits(dataset, root)
    if not splits.train:
        raise RunDirError(f"dataset {dataset!r} at {root!r} has no training image for INT8 calibration")
    return load_images(_sample(splits.train, count, seed), size_hw)
