"""``cdd-index build --set index.KEY=VALUE``: the index tuning options in the one ``--set`` grammar.

The keys are the integer tuning options of `serving.index.gallery` (``OPTION_KEYS`` less ``factory``, which
``--factory`` gives), parsed by `cdd_common.config_overrides` as cdd-train's and cdd-export's ``--set`` are.
A key left out is chosen from the gallery, as `GalleryIndex` documents.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cdd_common.config_overrides import apply_overrides

__all__ = ["IndexSettings", "TuningOptions", "tuning_options"]


@dataclass(frozen=True)
class TuningOptions:
    """The types of the ``index.*`` keys (see ``serving.index.gallery.OPTION_KEYS`` for their meaning)."""

    nlist: int
    nprobe: int
    pq_m: int
    pq_nbits: int
    refine: int
    hnsw_m: int
    ef_search: int
    ef_construction: int
    seed: int
    gpu: int


@dataclass(frozen=True)
class IndexSettings:
    """What ``cdd-index build --set`` may set: one section, ``index``."""

    index: TuningOptions


def tuning_options(overrides: Sequence[str]) -> dict[str, int]:
    """The options given as ``index.KEY=VALUE`` overrides, as ``{KEY: VALUE}``. Raises ValueError naming the
    override for a malformed one, an unknown key (listing the valid keys) or a value that is not an integer
    >= 0."""
    options = apply_overrides({}, IndexSettings, overrides, ValueError).get("index", {})
    negative = sorted(f"index.{key}={value}" for key, value in options.items() if value < 0)
    if negative:
        raise ValueError(f"--set {', '.join(negative)}: expected an integer >= 0")
    return options
