"""Plain records describing a retrieval dataset: one image per Record, three splits per DatasetSplits.

Stdlib only: the serving CLI imports this module without torch or numpy.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["PROTOCOLS", "DatasetSplits", "Record", "train_labels"]

PROTOCOLS = ("reid", "class")
"""Evaluation protocols.

"reid": query and gallery are different image sets; for each query, gallery items with the same
pid AND the same camid are dropped (re-identification rule).
"class": query set == gallery set (e.g. unseen classes of a retrieval benchmark); for each query only
the query image itself is dropped.
"""


@dataclass(frozen=True)
class Record:
    """One image: `path` (as given by the layout, absolute or relative to the working directory),
    `pid` (identity or class id as named by the dataset, not contiguous) and `camid`
    (0-based camera index; -1 when the layout has no cameras)."""

    path: str
    pid: int
    camid: int


@dataclass(frozen=True)
class DatasetSplits:
    """Train / query / gallery records of one dataset plus the evaluation protocol (see PROTOCOLS)."""

    name: str
    train: tuple[Record, ...]
    query: tuple[Record, ...]
    gallery: tuple[Record, ...]
    protocol: str

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(
                f"DatasetSplits {self.name!r}: protocol must be one of {PROTOCOLS}, got {self.protocol!r}"
            )

    @property
    def num_train_ids(self) -> int:
        """Number of distinct pids in the training split (= number of classifier outputs)."""
        return len({r.pid for r in self.train})


def train_labels(records: Iterable[Record]) -> tuple[list[int], dict[int, int]]:
    """Map original pids to contiguous labels 0..N-1 in sorted pid order.

    Returns (labels, pid_to_label): labels[i] is the label of the i-th record.
    """
    records = list(records)
    pid_to_label = {pid: label for label, pid in enumerate(sorted({r.pid for r in records}))}
    return [pid_to_label[r.pid] for r in records], pid_to_label
