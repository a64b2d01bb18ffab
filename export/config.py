"""Export configuration: frozen dataclasses with defaults, changed by ``--set key=value`` overrides.

Keys are dotted paths into the dataclasses, e.g. ``opset=18``, ``batch.max=32``,
``gates.onnxruntime.max_abs_err=1e-5``, ``tensorrt.int8=true``: the one override grammar of
`training.config_overrides`, shared with ``cdd-train``. Unknown keys are rejected with the list of valid
ones. The resolved config is stored in the bundle's provenance (``ExportConfig.to_dict``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, get_type_hints

from export.errors import ExportError
from training.config_overrides import apply_overrides

__all__ = [
    "OPSETS",
    "TENSORRT_MODES",
    "BatchConfig",
    "CompatibilityConfig",
    "ExportConfig",
    "ExportConfigError",
    "GateConfig",
    "TensorRTConfig",
    "Tolerance",
    "load_export_config",
]

OPSETS = (17, 18)
"""ONNX opsets the exporter is pinned to (both are read by onnxruntime >= 1.14 and TensorRT 10)."""
TENSORRT_MODES = ("auto", "off", "required")
"""auto: build a plan where TensorRT and a GPU exist; off: never; required: fail where they do not."""


class ExportConfigError(ExportError, ValueError):
    """An override names an unknown key, has a value of the wrong type, or makes the config inconsistent."""


@dataclass(frozen=True)
class Tolerance:
    """A parity gate passes when, over all compared L2-normalised embeddings, the largest element-wise
    absolute difference is <= ``max_abs_err`` and every row pair's cosine is >= ``min_cosine``."""

    max_abs_err: float
    min_cosine: float


@dataclass(frozen=True)
class GateConfig:
    """Parity gates: one tolerance per gate, and the real images they run on.

    ``images`` distinct query/gallery images are read (sampled with ``seed``); a gate runs at batch sizes
    ``batch.min``, ``odd_batch`` and ``batch.max``, cycling through the images when a batch needs more."""

    rebuild: Tolerance = field(default_factory=lambda: Tolerance(1e-4, 0.9999))
    fold: Tolerance = field(default_factory=lambda: Tolerance(1e-4, 0.9999))
    onnxruntime: Tolerance = field(default_factory=lambda: Tolerance(1e-4, 0.9999))
    torch_program: Tolerance = field(default_factory=lambda: Tolerance(1e-4, 0.9999))
    tensorrt_fp16: Tolerance = field(default_factory=lambda: Tolerance(2e-2, 0.995))
    tensorrt_int8: Tolerance = field(default_factory=lambda: Tolerance(1e-1, 0.95))
    images: int = 64
    odd_batch: int = 7
    seed: int = 0


@dataclass(frozen=True)
class BatchConfig:
    """Batch sizes the exported graphs accept (inclusive); ``opt`` is the TensorRT profile optimum."""

    min: int = 1
    opt: int = 16
    max: int = 64


@dataclass(frozen=True)
class TensorRTConfig:
    """TensorRT engine build: FP16 always, INT8 (entropy calibration on ``calibration_images`` training
    images, ``calibration_batch`` at a time) when ``int8``; ``workspace_mib`` caps builder scratch memory."""

    mode: str = "auto"
    int8: bool = False
    calibration_images: int = 256
    calibration_batch: int = 16
    workspace_mib: int = 2048


@dataclass(frozen=True)
class CompatibilityConfig:
    """Asymmetric retrieval (`export.compatibility_gate`): with ``teacher_bundle`` set (``--compatible-with``),
    the bundle declares compatibility with that bundle only if student queries on a gallery it embedded
    reach its own mAP within ``max_map_drop`` percent points; otherwise the export fails."""

    teacher_bundle: str = ""
    max_map_drop: float = 1.0


@dataclass(frozen=True)
class ExportConfig:
    """Everything ``cdd-export`` can be told besides the run dir and the output dir."""

    opset: int = 17
    batch: BatchConfig = field(default_factory=BatchConfig)
    gates: GateConfig = field(default_factory=GateConfig)
    tensorrt: TensorRTConfig = field(default_factory=TensorRTConfig)
    compatibility: CompatibilityConfig = field(default_factory=CompatibilityConfig)

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def parity_batch_sizes(self) -> tuple[int, ...]:
        """Batch sizes every gate runs at: (min, odd, max), sorted, without duplicates."""
        return tuple(sorted({self.batch.min, self.gates.odd_batch, self.batch.max}))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _validate(cfg: ExportConfig) -> None:
    problems = []
    if cfg.opset not in OPSETS:
        problems.append(f"opset must be one of {OPSETS}, found {cfg.opset}")
    b = cfg.batch
    if not 1 <= b.min <= b.opt <= b.max:
        problems.append(f"batch needs 1 <= min <= opt <= max, found min={b.min} opt={b.opt} max={b.max}")
    g = cfg.gates
    if not b.min <= g.odd_batch <= b.max or g.odd_batch % 2 == 0:
        problems.append(f"gates.odd_batch must be odd and within batch [{b.min}, {b.max}], found {g.odd_batch}; "
                        "set gates.odd_batch too when you shrink the batch range")
    if g.images < 1:
        problems.append(f"gates.images must be >= 1, found {g.images}")
    for f in fields(GateConfig):
        tol = getattr(g, f.name)
        if isinstance(tol, Tolerance) and (tol.max_abs_err < 0 or not -1.0 <= tol.min_cosine <= 1.0):
            problems.append(f"gates.{f.name} needs max_abs_err >= 0 and min_cosine in [-1, 1], found {tol}")
    t = cfg.tensorrt
    if t.mode not in TENSORRT_MODES:
        problems.append(f"tensorrt.mode must be one of {TENSORRT_MODES}, found {t.mode!r}")
    if t.calibration_images < 1 or t.calibration_batch < 1 or t.workspace_mib < 1:
        problems.append("tensorrt.calibration_images, calibration_batch and workspace_mib must be >= 1")
    if cfg.compatibility.max_map_drop < 0:
        problems.append(f"compatibility.max_map_drop must be >= 0 (percent points), found "
                        f"{cfg.compatibility.max_map_drop}")
    if problems:
        raise ExportConfigError("export config: " + "; ".join(problems))


def _build(cls: type, data: dict[str, Any]) -> Any:
    hints = get_type_hints(cls)
    values = {}
    for f in fields(cls):
        kind = hints[f.name]
        values[f.name] = _build(kind, data[f.name]) if is_dataclass(kind) else data[f.name]
    return cls(**values)


def load_export_config(overrides: Iterable[str] = ()) -> ExportConfig:
    """Defaults plus ``key=value`` overrides (dotted keys, the grammar of `training.config_overrides`).
    Raises ExportConfigError for a malformed override, an unknown key (listing the valid ones), a badly typed
    value or an inconsistent result."""
    tree = apply_overrides(ExportConfig().to_dict(), ExportConfig, overrides, ExportConfigError)
    return _build(ExportConfig, tree)
