"""The per-block latency table of a CDD run: what each block of the exported network costs on one runtime.

A table holds, for every prunable block, the measured latency (milliseconds per call of ``batch`` images)
at a few kept widths, plus the fixed part (input conversion + stem, and the head), all measured on this
machine (`training.latency_measure`). Between measured widths the latency is interpolated linearly. The
estimate of a whole network is ``fixed_ms + sum of its blocks at their kept widths``: it ignores
inter-block effects (caches, one call per graph instead of one per block), which ``whole_network`` records
at full width (measured as one graph vs estimated).

The table is JSON in the run dir (``latency_table.json``), written atomically, and reused on resume so
that the reset decisions of a resumed run are priced by the same numbers.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cdd_common.atomic_file import write_text_atomic
from cdd_common.json_document import read_json_object

__all__ = ["LATENCY_TABLE_FILE", "LATENCY_TABLE_VERSION", "BlockLatency", "LatencyTable", "LatencyTableError"]

LATENCY_TABLE_FILE = "latency_table.json"
LATENCY_TABLE_VERSION = 1


class LatencyTableError(ValueError):
    """A latency table file is malformed or does not belong to this run (names the file, field and fix)."""


@dataclass(frozen=True)
class BlockLatency:
    """One block: ``widths`` (increasing kept counts, the last one the full width ``width``) and ``ms`` at
    each (made non-decreasing: ``ms[i] = max(raw_ms[:i + 1])``, so pruning never raises an estimate);
    ``raw_ms`` the medians as measured."""

    name: str
    width: int
    widths: tuple[int, ...]
    ms: tuple[float, ...]
    raw_ms: tuple[float, ...]

    def at(self, kept: int) -> float:
        """Latency (ms) with ``kept`` inner channels, linear between measured widths, clamped at the ends."""
        w = self.widths
        if kept <= w[0]:
            return self.ms[0]
        if kept >= w[-1]:
            return self.ms[-1]
        i = bisect_left(w, kept)
        if w[i] == kept:
            return self.ms[i]
        t = (kept - w[i - 1]) / (w[i] - w[i - 1])
        return self.ms[i - 1] + t * (self.ms[i] - self.ms[i - 1])

    def max_slope(self) -> float:
        """Largest ms per channel between adjacent measured widths (0 for a single width)."""
        return max((b - a) / (v - u) for u, v, a, b in zip(self.widths, self.widths[1:], self.ms, self.ms[1:],
                                                            strict=False)) if len(self.widths) > 1 else 0.0


@dataclass(frozen=True)
class LatencyTable:
    """Measured latencies of one architecture on one runtime and machine (see the module docstring).

    ``key`` identifies what was measured (runtime, batch, threads, input size, architecture, block widths);
    a resumed run checks it. ``machine`` (CPU model and flags), ``runtime_version`` and ``whole_network``
    (full width as one graph: measured vs estimated ms) are recorded for the reader."""

    key: dict[str, Any]
    fixed_ms: dict[str, float]
    blocks: tuple[BlockLatency, ...]
    machine: dict[str, str] = field(default_factory=dict)
    runtime_version: str = ""
    whole_network: dict[str, float] = field(default_factory=dict)
    measurement: dict[str, Any] = field(default_factory=dict)
    version: int = LATENCY_TABLE_VERSION

    @property
    def fixed_total_ms(self) -> float:
        """The part no pruning changes: input conversion + stem, and the head."""
        return sum(self.fixed_ms.values())

    def estimate_ms(self, kept: Sequence[int]) -> float:
        """Estimated latency (ms per call) of the network keeping ``kept[b]`` inner channels in block b."""
        if len(kept) != len(self.blocks):
            raise ValueError(f"{len(kept)} kept counts for a table of {len(self.blocks)} blocks")
        return self.fixed_total_ms + sum(b.at(k) for b, k in zip(self.blocks, kept, strict=True))

    def floor_ms(self) -> float:
        """The lowest estimate: every block at its smallest measured width (the smallest the export keeps)."""
        return self.estimate_ms([b.widths[0] for b in self.blocks])

    def full_ms(self) -> float:
        """The estimate at full width (nothing pruned)."""
        return self.estimate_ms([b.width for b in self.blocks])

    def rounding_step_ms(self, round_to: int) -> float:
        """The most one rounding step (``round_to`` channels of the steepest block) can change the estimate."""
        return max(b.max_slope() for b in self.blocks) * max(1, round_to)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["blocks"] = [{**asdict(b), "widths": list(b.widths), "ms": list(b.ms), "raw_ms": list(b.raw_ms)}
                          for b in self.blocks]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "latency table") -> LatencyTable:
        fix = "delete it to measure the table again (a resumed run would then price its decisions differently)"
        if data.get("version") != LATENCY_TABLE_VERSION:
            raise LatencyTableError(f"{source}: version {data.get('version')!r}, expected "
                                    f"{LATENCY_TABLE_VERSION}; {fix}")
        try:
            blocks = tuple(BlockLatency(str(b["name"]), int(b["width"]), tuple(int(w) for w in b["widths"]),
                                        tuple(float(v) for v in b["ms"]), tuple(float(v) for v in b["raw_ms"]))
                           for b in data["blocks"])
            table = cls(dict(data["key"]), {k: float(v) for k, v in data["fixed_ms"].items()}, blocks,
                        dict(data.get("machine", {})), str(data.get("runtime_version", "")),
                        dict(data.get("whole_network", {})), dict(data.get("measurement", {})))
        except (KeyError, TypeError, ValueError) as exc:
            raise LatencyTableError(f"{source}: malformed latency table ({type(exc).__name__}: {exc}); {fix}") from exc
        for b in blocks:
            if not b.widths or len(b.widths) != len(b.ms) or list(b.widths) != sorted(set(b.widths)):
                raise LatencyTableError(f"{source}: block {b.name} needs increasing widths with one ms each, found "
                                        f"widths {list(b.widths)} and {len(b.ms)} values; {fix}")
        return table

    def save(self, path: str | Path) -> Path:
        """Write JSON atomically (fsynced)."""
        return write_text_atomic(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        data = read_json_object(path, LatencyTableError, "latency table", "it is written by `cdd-train` at start")
        return cls.from_dict(data, source=str(path))

    def check_key(self, expected: dict[str, Any], source: str) -> None:
        """Raise LatencyTableError naming the first field where this table differs from ``expected``."""
        for name, value in expected.items():
            found = self.key.get(name)
            if found != value:
                raise LatencyTableError(
                    f"{source}: measured for {name} = {found!r}, this run has {value!r}; resume with the settings "
                    f"the table was measured with, or start a new run.out_dir (a new table is measured there)")
