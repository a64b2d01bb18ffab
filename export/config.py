"""Export configuration: frozen dataclasses with defaults, changed by ``--set key=value`` overrides.

Keys are dotted paths into the dataclasses, e.g. ``opset=18``, ``batch.max=32``,
``gates.onnxruntime.max_abs_err=1e-5``, ``tensorrt.int8=true``, ``precision=int8``, ``int8.calibration_images=512``,
``gates.int8.max_map_drop=1.0``: the one override grammar of `cdd_common.config_overrides`, shared with
``cdd-train``. Unknown keys are rejected with the list of valid
ones. The resolved config is stored in the bundle's provenance (``ExportConfig.to_dict``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, get_type_hints

from cdd_common.config_overrides import apply_overrides
from export.errors import ExportError

__all__ = [
    "CALIBRATION_METHODS",
    "INT8_EXCLUDES",
    "INT8_FORMATS",
    "OPSETS",
    "PRECISIONS",
    "TENSORRT_MODES",
    "BatchConfig",
    "CompatibilityConfig",
    "ExportConfig",
    "ExportConfigError",
    "GateConfig",
    "Int8Config",
    "RetrievalTolerance",
    "TensorRTConfig",
    "Tolerance",
    "load_export_config",
]

OPSETS = (17, 18)
"""ONNX opsets the exporter is pinned to (both are read by onnxruntime >= 1.14 and TensorRT 10)."""
TENSORRT_MODES = ("auto", "off", "required")
"""auto: build a plan where TensorRT and a GPU exist; off: never; required: fail where they do not."""
PRECISIONS = ("fp32", "int8")
"""Numeric precision of the bundle's ``model.onnx``: fp32, or int8 (ONNX Runtime static quantisation, CPU)."""
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
"""ONNX Runtime calibration methods for the int8 activation ranges."""
INT8_FORMATS = ("auto", "qdq", "qoperator")
"""auto: quantise in both formats and keep the one that runs faster; qdq / qoperator: that format only."""
INT8_EXCLUDES = ("auto", "none", "first", "last", "first_last")
"""Which of the network's first convolution and last weight layer stay in float; auto: none and first are both
built and timed, like the formats."""


class ExportConfigError(ExportError, ValueError):
    """An override names an unknown key, has a value of the wrong type, or makes the config inconsistent."""


@dataclass(frozen=True)
class Tolerance:
    """A parity gate passes when, over all compared L2-normalised embeddings, the largest element-wise
    absolute difference is <= ``max_abs_err`` and every row pair's cosine is >= ``min_cosine``."""

    max_abs_err: float
    min_cosine: float


@dataclass(frozen=True)
class RetrievalTolerance:
    """The int8 gate passes when every gate image's int8 embedding has cosine >= ``min_cosine`` with its fp32
    embedding and the int8 mAP on the run's query/gallery is at most ``max_map_drop`` points (0..100 scale)
    below the fp32 mAP. ``min_speedup`` (0 = record only) also requires the chosen int8 graph's images/s at
    ``int8.timing_batch`` to be at least that multiple of the fp32 graph's, measured side by side on this
    machine: an int8 bundle that is not faster than fp32 here is then refused instead of shipped."""

    min_cosine: float = 0.97
    max_map_drop: float = 0.5
    min_speedup: float = 0.0


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
    int8: RetrievalTolerance = field(default_factory=RetrievalTolerance)
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
    images, ``calibration_batch`` at a time) when ``int8`` (``--tensorrt-precision int8``); ``workspace_mib``
    caps builder scratch memory."""

    mode: str = "auto"
    int8: bool = False
    calibration_images: int = 256
    calibration_batch: int = 16
    workspace_mib: int = 2048


@dataclass(frozen=True)
class CompatibilityConfig:
    """Asymmetric retrieval (`export.compatibility_gate`): with ``teacher_bundle`` set (``--compatible-with`` on
    an fp32 export), the bundle declares compatibility with that bundle only if student queries on a gallery it embedded
    reach its own mAP within ``max_map_drop`` percent points; otherwise the export fails."""

    teacher_bundle: str = ""
    max_map_drop: float = 1.0


@dataclass(frozen=True)
class Int8Config:
    """ONNX Runtime static int8 quantisation (used when ``precision`` is int8): weights per channel
    (``per_channel``), activations calibrated with ``calibration_method`` on ``calibration_images`` training
    images sampled with ``calibration_seed``; ``reduce_range`` quantises weights to 7 bits (avoids int16
    saturation in the AVX2/AVX-512 kernels without VNNI, at some precision). ``format`` auto times both
    formats at batch ``timing_batch`` for ``timing_seconds`` each. ``exclude`` keeps the first conv / last
    layer in float; auto builds both "none" and "first" (a float first conv is closer to fp32, and faster at
    64x32 but slower at 256x128). The candidates are gated fastest first; the first one that passes is kept.
    ``eval_images`` caps the mAP gate's query + gallery images (0 = all).
    ``compatible_with`` (``--compatible-with`` with ``--precision int8``): an fp32 bundle of the same
    checkpoint whose gallery indexes the int8 bundle may search; declared in the manifest only when int8
    queries against that bundle's gallery embeddings keep the mAP within ``gates.int8.max_map_drop``
    ("" = declare nothing: indexes must be built with the int8 bundle)."""

    calibration_images: int = 256
    calibration_seed: int = 0
    calibration_method: str = "minmax"
    format: str = "auto"
    exclude: str = "auto"
    per_channel: bool = True
    reduce_range: bool = False
    timing_batch: int = 32
    timing_seconds: float = 1.0
    eval_images: int = 0
    compatible_with: str = ""


@dataclass(frozen=True)
class ExportConfig:
    """Everything ``cdd-export`` can be told besides the run dir and the output dir."""

    opset: int = 17
    precision: str = "fp32"
    batch: BatchConfig = field(default_factory=BatchConfig)
    gates: GateConfig = field(default_factory=GateConfig)
    tensorrt: TensorRTConfig = field(default_factory=TensorRTConfig)
    compatibility: CompatibilityConfig = field(default_factory=CompatibilityConfig)
    int8: Int8Config = field(default_factory=Int8Config)

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
    problems += _int8_problems(cfg)
    if problems:
        raise ExportConfigError("export config: " + "; ".join(problems))


def _int8_problems(cfg: ExportConfig) -> list[str]:
    problems = []
    if cfg.precision not in PRECISIONS:
        problems.append(f"precision must be one of {PRECISIONS}, found {cfg.precision!r}")
    q, gate = cfg.int8, cfg.gates.int8
    for name, value, allowed in (("calibration_method", q.calibration_method, CALIBRATION_METHODS),
                                 ("format", q.format, INT8_FORMATS), ("exclude", q.exclude, INT8_EXCLUDES)):
        if value not in allowed:
            problems.append(f"int8.{name} must be one of {allowed}, found {value!r}")
    if q.calibration_images < 1 or q.timing_batch < 1 or q.eval_images < 0 or q.timing_seconds <= 0:
        problems.append("int8 needs calibration_images >= 1, timing_batch >= 1, timing_seconds > 0 and "
                        f"eval_images >= 0, found {q}")
    if not -1.0 <= gate.min_cosine <= 1.0 or gate.max_map_drop < 0 or gate.min_speedup < 0:
        problems.append("gates.int8 needs min_cosine in [-1, 1], max_map_drop >= 0 and min_speedup >= 0, "
                        f"found {gate}")
    if cfg.precision == "int8" and cfg.tensorrt.int8:
        problems.append("precision=int8 (ONNX Runtime int8 on CPU) and tensorrt.int8 (--tensorrt-precision int8, "
                        "a TensorRT INT8 plan built from the fp32 graph) are separate engines; choose one")
    if cfg.precision == "int8" and cfg.tensorrt.mode == "required":
        problems.append("precision=int8 bundles carry the ONNX Runtime int8 model only; for a TensorRT INT8 "
                        "engine export precision=fp32 with --tensorrt-precision int8 --tensorrt required")
    return problems


def _build(cls: type, data: dict[str, Any]) -> Any:
    hints = get_type_hints(cls)
    values = {}
    for f in fields(cls):
        kind = hints[f.name]
        values[f.name] = _build(kind, data[f.name]) if is_dataclass(kind) else data[f.name]
    return cls(**values)


def load_export_config(overrides: Iterable[str] = ()) -> ExportConfig:
    """Defaults plus ``key=value`` overrides (dotted keys, the grammar of `cdd_common.config_overrides`).
    Raises ExportConfigError for a malformed override, an unknown key (listing the valid ones), a badly typed
    value or an inconsistent result."""
    tree = apply_overrides(ExportConfig().to_dict(), ExportConfig, overrides, ExportConfigError)
    return _build(ExportConfig, tree)
