"""`describe_split`: which classes or identities a dataset's split sends to training and which to testing,
in a few log lines, so a user sees how their data was divided before a run spends time on it. Stdlib only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from training.data.layouts import load_dataset
from training.data.records import DatasetSplits, Record

__all__ = ["describe_split", "log_split"]

_SHOWN = 12


def _names(records: Sequence[Record], by_folder: bool) -> list[str]:
    if by_folder:
        return sorted({Path(r.path).parent.name for r in records})
    return [str(pid) for pid in sorted({r.pid for r in records})]


def _listing(names: list[str]) -> str:
    if len(names) <= _SHOWN:
        return ", ".join(names)
    half = _SHOWN // 2
    return ", ".join(names[:half]) + f", ... ({len(names) - _SHOWN} more) ..., " + ", ".join(names[-half:])


def _part(label: str, records: Sequence[Record], what: str, by_folder: bool) -> str:
    names = _names(records, by_folder)
    return f"{label}: {len(records):,} images of {len(names):,} {what} ({_listing(names)})"


def describe_split(splits: DatasetSplits, root: str | Path) -> list[str]:
    """Log lines naming the layout, then the training and the test classes (folder layout: class folder names;
    query == gallery) or identities (re-ID layouts: pids, query and gallery apart; pid 0 = distractors)."""
    if splits.protocol == "class":
        return [f"dataset {splits.name} at {root}: classes split into training and test (retrieval among the "
                "test classes, query == gallery)",
                _part("  train", splits.train, "classes", True),
                _part("  test", splits.query, "classes", True)]
    return [f"dataset {splits.name} at {root}: identities split into training and test (queries searched in "
            "the gallery)",
            _part("  train", splits.train, "identities", False),
            _part("  query", splits.query, "identities", False),
            _part("  gallery", splits.gallery, "identities", False)]


def log_split(dataset: str, root: str | Path) -> None:
    """List ``dataset`` under ``root`` and log `describe_split` at INFO (rank 0 of a data-parallel group only).
    Raises what `load_dataset` raises for a missing or malformed dataset, before any training starts."""
    splits = load_dataset(dataset, root)
    if os.environ.get("RANK", "0") == "0":
        for line in describe_split(splits, root):
            logging.getLogger("training").info("%s", line)
