"""Typed training configuration: frozen dataclasses per section, loaded from a TOML preset/file plus
``section.key=value`` overrides (the grammar of `cdd_common.config_overrides`, shared with ``cdd-export``);
unknown keys are rejected with the list of valid ones.

Presets live in ``training/presets/<name>.toml``; a file may ``extends = "<preset>"`` another preset.
The resolved config is saved with every run (``config.json``).
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdd_common.config_overrides import apply_overrides
from training.shrink_schedule import SHRINK_CURVES

__all__ = [
    "ConfigError",
    "RunConfig",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "LossConfig",
    "CDDConfig",
    "TrainConfig",
    "PRESET_DIR",
    "REFINE_INITS",
    "COMPAT_FORMS",
    "LATENCY_RUNTIMES",
    "load_config",
]

PRESET_DIR = Path(__file__).parent / "presets"
REFINE_INITS = ("cdd", "teacher")
REFINE_FORMS = ("indicator", "plain")
COMPAT_FORMS = ("cosine", "l2")
"""Forms of the compatibility loss (`training.compatibility.compatibility_loss` documents each)."""
LATENCY_RUNTIMES = ("onnxruntime-cpu",)
"""Runtimes a per-block latency table can be measured with (`training.latency_measure`)."""


EVAL_BATCHNORM = ("recompute", "running")
"""How mid-run evaluations set BatchNorm statistics (`RunConfig`)."""


class ConfigError(ValueError):
    """Bad configuration: names the file/key, what was expected and the valid choices."""


@dataclass(frozen=True)
class RunConfig:
    """out_dir: run directory; kind: "teacher" trains a plain net, "student" runs CDD against a teacher. eval_every:
    evaluate every N epochs during the run (0 = only at the end); eval_batchnorm: how those mid-run
    evaluations treat BatchNorm: "recompute" (default) evaluates the deployable network with its statistics
    recomputed for its current weights from training batches (on a copy: training is not touched) and keeps
    the running-statistics result beside it; "running" uses the running statistics only. The final evaluation
    measures the weights as exported and, with "recompute", adds the recomputed result as "recomputed_stats".
    The defaults of `RunConfig`, `DataConfig`, `ModelConfig` and `OptimConfig` are the demo-teacher preset's
    values (a config without a preset trains the demo teacher); those of `LossConfig` and `CDDConfig` are
    library defaults, documented there."""

    kind: str = "teacher"
    out_dir: str = "runs/demo/teacher"
    seed: int = 0
    epochs: int = 20
    eval_every: int = 5
    eval_batchnorm: str = "recompute"
    device: str = "auto"
    amp: bool = True
    log_every: int = 10
    progress: bool = True
    max_steps_per_epoch: int = 0

    def __post_init__(self) -> None:
        if self.eval_batchnorm not in EVAL_BATCHNORM:
            raise ConfigError(f"run.eval_batchnorm must be one of {EVAL_BATCHNORM}, found {self.eval_batchnorm!r}")


@dataclass(frozen=True)
class DataConfig:
    """Dataset layout name + root; height/width in pixels; p identities x k images per batch. Defaults: the
    demo-teacher preset's (the embedded synthetic re-ID set at 64x32)."""

    dataset: str = "market1501"
    root: str = "data/synthetic-reid"
    height: int = 64
    width: int = 32
    p: int = 16
    k: int = 4
    num_workers: int = 0
    on_error: str = "raise"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    flip_p: float = 0.5
    pad: int = 4
    erasing_p: float = 0.0
    eval_batch_size: int = 128


@dataclass(frozen=True)
class ModelConfig:
    """init: "scratch", "imagenet" (local torchvision file at imagenet_weights) or "teacher" (students only).
    Defaults: the demo-teacher preset's (ResNet-18 at half width)."""

    depth: int = 18
    width: float = 0.5
    last_stride: int = 1
    embedding_dim: int = 512
    init: str = "scratch"
    imagenet_weights: str = ""


@dataclass(frozen=True)
class OptimConfig:
    """SGD; lr schedule: linear warm-up from warmup_factor*lr over warmup_epochs, flat until flat_until
    (epoch), cosine to min_lr at the end. head_lr_mult scales the head's lr; indicator_lr_mult the indicators'.
    average_last: fraction of the run's last epochs whose end-of-epoch weights are averaged into the final
    model (stochastic weight averaging, `training.weight_averaging`; 0 = off, the last step's weights).
    Defaults: the demo-teacher preset's."""

    lr: float = 0.02
    head_lr_mult: float = 1.5
    indicator_lr_mult: float = 1.0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 1
    warmup_factor: float = 0.1
    flat_until: float = 8
    min_lr: float = 1e-6
    grad_clip: float = 0.0
    average_last: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.average_last <= 1.0:
            raise ConfigError(f"optim.average_last must be a fraction of the run in [0, 1] (0 = off), "
                              f"found {self.average_last}")


@dataclass(frozen=True)
class LossConfig:
    """Loss weights (0 disables a term). compat_weight / compat_form: the compatibility loss of asymmetric
    retrieval (student embedding pulled towards the frozen teacher's, `training.compatibility`; off by
    default and in the paper preset; ignored by teacher runs, which have no teacher).
    distill_mixup_alpha: > 0 adds a mixed copy of each batch on which only the distillation terms are taken
    (`training.distill_mixup`; off by default and in the paper preset; ignored by teacher runs).
    The defaults are library defaults: the paper's weights with both extensions off (the demo-student
    preset turns compat_weight and distill_mixup_alpha on)."""

    id_weight: float = 1.0
    label_smoothing: float = 0.1
    triplet_weight: float = 1.0
    triplet_margin: float = 0.35
    kd_weight: float = 1.0
    kd_temperature: float = 2.0
    feature_weight: float = 0.5
    lasso_lambda: float = 0.004
    compat_weight: float = 0.0
    compat_form: str = "cosine"
    distill_mixup_alpha: float = 0.0

    def __post_init__(self) -> None:
        if self.distill_mixup_alpha < 0:
            raise ConfigError(f"loss.distill_mixup_alpha must be >= 0 (0 = off; 1 = mixing weight uniform in "
                              f"[0, 1]), found {self.distill_mixup_alpha}")
        if self.compat_form not in COMPAT_FORMS:
            raise ConfigError(f"loss.compat_form must be one of {COMPAT_FORMS}, found {self.compat_form!r}")
        if self.compat_weight < 0:
            raise ConfigError(f"loss.compat_weight must be >= 0 (0 = off), found {self.compat_weight}")


@dataclass(frozen=True)
class CDDConfig:
    """Capacity Dynamic Distillation. grg_start_epoch: gradient resetting starts (ref 20/120); memory_size
    teacher descriptors per block; topk neighbours; ratio of candidate channels; prune_threshold on row
    norms; reset_rule "decay" (ours: a reset row's momentum is cleared and its norm shrinks linearly to
    exactly zero within reset_decay_steps optimizer steps; the slim network is the complement of the reset
    set) or "reference" (the paper code: lasso subgradient + weight decay on reset rows, pruned by the
    threshold only); flops_budget (fraction of the teacher's FLOPs, 0 = off) is a hard cap on the exported
    network, round_to included: the reset set grows until the network without it meets the budget, then
    stops; round_to rounds kept counts up to a multiple (1 = off); gradient_reset false gives the
    "lasso + threshold only" ablation. static_arch: path to an arch.json to train a static student of that
    architecture with the same distillation losses (ablation baselines; with model.init = "teacher" it
    starts from the teacher's weights sliced to that architecture: prune-then-distill).
    latency_budget_ms (0 = off; our extension) caps the estimated latency of the exported network on
    latency_runtime (only "onnxruntime-cpu"), priced by a per-block table the trainer measures at start on
    this machine at latency_batch images per call with latency_threads intra-op threads (docs/latency_budget.md);
    with flops_budget too, the reset set grows until both are met.
    shrink_curve ("cubic", "linear", "geometric" or "none"; `training.shrink_schedule`) paces that growth: from
    grg_start_epoch the reset set may only grow up to a scheduled limit that falls from the full network to
    the budget at shrink_end (a fraction of the run), so the student shrinks gradually; "none" lets the
    budget alone stop growth (the network may be cut to the budget within a few steps). fill_to_schedule:
    when the batch's proposal (channels unimportant for every sample) leaves the reset set short of the
    scheduled limit, the other channels are admitted by their contribution score, smallest first (our
    extension: the schedule sets how many channels go, GRG which; off = the reset set may lag).
    refine_from: a finished CDD student run dir; this run then trains that run's architecture (its kept
    channels), the pruned channels held at zero (`training.refine`; needs gradient_reset = false and
    loss.lasso_lambda = 0; replaces model.init), starting from refine_init: "cdd" (that run's final weights)
    or "teacher" (the teacher's weights with the same channels kept: prune-then-distill of CDD's choice,
    in CDD's training form; with "teacher", refine_from may also be an arch.json of kept channels).
    refine_form: what the refine stage trains, "indicator" (CDD's training form: the full-width network, the
    pruned indicator rows held at zero) or "plain" (the slim network itself, each block's conv, BN and
    indicator folded into one conv of the kept channels and a BN, `training.plain_fold`; from the teacher it
    is prune-then-distill). Both export to the same network.
    The defaults are library defaults: the paper's values (grg_start_epoch, memory_size, topk, ratio,
    prune_threshold) with reset_rule "decay" and no budget or schedule; the demo-student and paper-student
    presets set their own (training/presets)."""

    teacher_run: str = "runs/demo/teacher"
    grg_start_epoch: float = 20
    memory_size: int = 24000
    topk: int = 2
    ratio: float = 0.5
    prune_threshold: float = 1e-5
    reset_rule: str = "decay"
    reset_decay_steps: int = 1000
    flops_budget: float = 0.0
    round_to: int = 1
    gradient_reset: bool = True
    static_arch: str = ""
    latency_budget_ms: float = 0.0
    latency_runtime: str = "onnxruntime-cpu"
    latency_batch: int = 16
    latency_threads: int = 1
    shrink_curve: str = "none"
    shrink_end: float = 0.6
    fill_to_schedule: bool = False
    refine_from: str = ""
    refine_init: str = "cdd"
    refine_form: str = "indicator"

    def __post_init__(self) -> None:
        if self.shrink_curve not in SHRINK_CURVES:
            raise ConfigError(f"cdd.shrink_curve must be one of {SHRINK_CURVES}, found {self.shrink_curve!r}")
        if not 0 < self.shrink_end <= 1:
            raise ConfigError(f"cdd.shrink_end must be a fraction of the run in (0, 1] (when the schedule reaches "
                              f"the budget), found {self.shrink_end}")
        if self.refine_form not in REFINE_FORMS:
            raise ConfigError(f"cdd.refine_form must be one of {REFINE_FORMS}, found {self.refine_form!r}")
        if self.refine_init not in REFINE_INITS:
            raise ConfigError(f"cdd.refine_init must be one of {REFINE_INITS}, found {self.refine_init!r}")
        if self.latency_budget_ms < 0:
            raise ConfigError(f"cdd.latency_budget_ms must be >= 0 (milliseconds per call of latency_batch "
                              f"images; 0 = off), found {self.latency_budget_ms}")
        if self.latency_runtime not in LATENCY_RUNTIMES:
            raise ConfigError(f"cdd.latency_runtime must be one of {LATENCY_RUNTIMES}, found "
                              f"{self.latency_runtime!r}; the latency table is measured with ONNX Runtime on CPU")
        if self.latency_batch < 1 or self.latency_threads < 1:
            raise ConfigError(f"cdd.latency_batch and cdd.latency_threads must be >= 1, found "
                              f"{self.latency_batch} and {self.latency_threads}")


@dataclass(frozen=True)
class TrainConfig:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    cdd: CDDConfig = field(default_factory=CDDConfig)

    def __post_init__(self) -> None:
        if self.cdd.refine_from and (self.cdd.gradient_reset or self.loss.lasso_lambda or self.cdd.static_arch):
            raise ConfigError(f"cdd.refine_from = {self.cdd.refine_from!r} trains a fixed architecture: it needs "
                              f"cdd.gradient_reset = false (found {self.cdd.gradient_reset}), loss.lasso_lambda = 0 "
                              f"(found {self.loss.lasso_lambda}) and no cdd.static_arch (found "
                              f"{self.cdd.static_arch!r}); set them so (preset demo-refine does)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(sections))
        if unknown:
            raise ConfigError(f"{source}: unknown section(s) {unknown}; valid sections are {sorted(sections)}")
        built = {}
        for f in dataclasses.fields(cls):
            section_cls = f.default_factory  # type: ignore[misc]
            built[f.name] = _build_section(section_cls, data.get(f.name, {}), f"{source} [{f.name}]")
        return cls(**built)


def _build_section(section_cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a table of key = value, found {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(section_cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(fields)}")
    hints = typing.get_type_hints(section_cls)
    out = {}
    for name, value in values.items():
        expected = typing.get_origin(hints[name]) or hints[name]
        out[name] = _coerce(value, expected, f"{where} {name}")
    return section_cls(**out)


def _coerce(value: Any, expected: type, where: str) -> Any:
    if expected is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if expected is tuple and isinstance(value, list | tuple):
        return tuple(float(v) for v in value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {expected.__name__}, found {value!r} ({type(value).__name__})")
    return value


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def _read_toml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if not path.is_file():
        presets = sorted(p.stem for p in PRESET_DIR.glob("*.toml"))
        raise ConfigError(f"{path}: config file not found; give a TOML file or one of the presets {presets}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc})") from exc
    parent = data.pop("extends", None)
    if parent is None:
        return data
    parent_path = _resolve(parent)
    if parent_path in seen:
        raise ConfigError(f"{path}: `extends` forms a cycle through {parent_path}")
    return _merge(_read_toml(parent_path, seen + (path,)), data)


def _resolve(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        return path
    return PRESET_DIR / f"{name_or_path}.toml"


def load_config(source: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Load a preset name (e.g. "demo-teacher") or TOML path, apply ``section.key=value`` overrides (values
    typed by the fields: optim.lr=0.02, run.amp=false, data.root=some/dir), validate types and keys."""
    data = _read_toml(_resolve(source)) if source else {}
    data = apply_overrides(data, TrainConfig, overrides, ConfigError)
    return TrainConfig.from_dict(data, source=str(source or "defaults"))
