"""Architecture spec: the small JSON document from which a (slim) network is rebuilt.

Architecture is data: the run dir stores this spec next to a state_dict; export rebuilds the network
from both and loads the weights strictly. Never a pickled module.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from cdd_common.atomic_file import write_text_atomic
from cdd_common.json_document import read_json_object

__all__ = [
    "ARCH_SCHEMA_VERSION",
    "DEPTHS",
    "ArchSpec",
    "ArchSpecError",
    "stage_widths",
    "block_layout",
]

ARCH_SCHEMA_VERSION = 1

# depth -> (block type, blocks per stage), as torchvision.
DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


class ArchSpecError(ValueError):
    """An architecture spec is malformed or inconsistent (names the file/field and the fix)."""


def stage_widths(width: float) -> tuple[int, int, int, int, int]:
    """(stem, stage1..4 inner widths) for a width multiplier; 1.0 gives torchvision's 64/64/128/256/512."""
    base = (64, 64, 128, 256, 512)
    return tuple(max(1, int(round(b * width))) for b in base)  # type: ignore[return-value]


def block_layout(depth: int, width: float) -> list[tuple[str, int]]:
    """Block names (``layer3.4``) with each block's full inner width p, in forward order."""
    if depth not in DEPTHS:
        raise ArchSpecError(f"depth {depth} is not supported; choose one of {sorted(DEPTHS)}")
    _, counts = DEPTHS[depth]
    widths = stage_widths(width)[1:]
    return [(f"layer{s + 1}.{i}", widths[s]) for s, n in enumerate(counts) for i in range(n)]


@dataclass(frozen=True)
class ArchSpec:
    """A ResNet re-ID network.

    ``input_size`` is (height, width) in pixels. ``kept_channels`` is None for full width, else one sorted
    tuple of kept inner-channel indices per block in forward order (indices into the full inner width p).
    ``indicators`` says whether blocks carry CDD indicators (students) or not (teachers, plain nets); a
    plain net with ``kept_channels`` is the indicator-free slim equivalent (static students, cost counting).
    ``num_classes`` 0 means no ID classifier (deployment).
    """

    depth: int = 50
    width: float = 1.0
    last_stride: int = 1
    embedding_dim: int = 512
    num_classes: int = 0
    input_size: tuple[int, int] = (256, 128)
    indicators: bool = False
    kept_channels: tuple[tuple[int, ...], ...] | None = None
    schema_version: int = ARCH_SCHEMA_VERSION

    @property
    def block_type(self) -> str:
        return DEPTHS[self.depth][0]

    def blocks(self) -> list[tuple[str, int]]:
        return block_layout(self.depth, self.width)

    def kept_counts(self) -> list[int]:
        """Surviving inner channels per block (full widths when not pruned)."""
        if self.kept_channels is None:
            return [p for _, p in self.blocks()]
        return [len(k) for k in self.kept_channels]

    def with_kept(self, kept: list[list[int]] | None) -> ArchSpec:
        spec = replace(self, kept_channels=None if kept is None else tuple(tuple(int(i) for i in k) for k in kept))
        spec.validate()
        return spec

    def validate(self, source: str = "arch spec") -> None:
        """Raise ArchSpecError naming ``source`` and the field when the spec is inconsistent."""
        if self.schema_version != ARCH_SCHEMA_VERSION:
            raise ArchSpecError(f"{source}: schema_version {self.schema_version}, expected {ARCH_SCHEMA_VERSION}; "
                                "re-run training with this version to write a current spec")
        if self.depth not in DEPTHS:
            raise ArchSpecError(f"{source}: depth {self.depth} not in {sorted(DEPTHS)}")
        if self.width <= 0:
            raise ArchSpecError(f"{source}: width must be > 0, found {self.width}")
        if self.last_stride not in (1, 2):
            raise ArchSpecError(f"{source}: last_stride must be 1 or 2, found {self.last_stride}")
        h, w = self.input_size
        if h < 32 or w < 16:
            raise ArchSpecError(f"{source}: input_size {self.input_size} is too small; the network downsamples "
                                "16-32x, use at least (32, 16)")
        if self.kept_channels is None:
            return
        blocks = self.blocks()
        if len(self.kept_channels) != len(blocks):
            raise ArchSpecError(f"{source}: kept_channels has {len(self.kept_channels)} entries, the "
                                f"ResNet-{self.depth} has {len(blocks)} blocks")
        for (name, p), kept in zip(blocks, self.kept_channels, strict=True):
            if not kept:
                raise ArchSpecError(f"{source}: block {name} keeps no channel; every block keeps at least one")
            if list(kept) != sorted(set(kept)) or kept[0] < 0 or kept[-1] >= p:
                raise ArchSpecError(f"{source}: block {name} kept indices must be sorted, unique and in [0, {p}); "
                                    f"found {list(kept)[:8]}...")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["input_size"] = list(self.input_size)
        data["kept_channels"] = None if self.kept_channels is None else [list(k) for k in self.kept_channels]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "arch spec") -> ArchSpec:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ArchSpecError(f"{source}: unknown fields {unknown}; valid fields are {sorted(known)}")
        values = dict(data)
        if "input_size" in values:
            values["input_size"] = tuple(values["input_size"])
        if values.get("kept_channels") is not None:
            values["kept_channels"] = tuple(tuple(k) for k in values["kept_channels"])
        spec = cls(**values)
        spec.validate(source)
        return spec

    def save(self, path: str | Path) -> Path:
        """Write JSON atomically."""
        return write_text_atomic(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> ArchSpec:
        fix = "it is written by `cdd-train` into the run dir"
        data = read_json_object(path, ArchSpecError, "architecture spec", fix)
        return cls.from_dict(data, source=str(path))
