"""Engine benchmark: latency percentiles and images/s per bundle x backend x batch size, on random uint8
images of each bundle's input size, with student / teacher ratios next to the FLOPs and params ratios.

Benchmark backend names add the device (and compilation) to `serving.backends.BACKENDS`:
``tensorrt``, ``onnxruntime-cuda``, ``onnxruntime-cpu``, ``torch-cuda``, ``torch-cpu``,
``torch-compiled-cuda``, ``torch-compiled-cpu``. ONNX Runtime gets ``threads`` intra-op threads and torch
``torch.set_num_threads(threads)`` (torch is imported only when a torch backend is opened).

For TensorRT, engine-only latency (device buffers already filled, timed with CUDA events) is measured when
the engine exposes ``time_engine_only(images, iters) -> list[float]`` (seconds per execution); otherwise
the result says it was skipped and why.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serving.backends import BackendUnavailable, Engine, create_engine
from serving.benchmarks.latency import percentiles_ms, time_calls
from serving.benchmarks.precision import int8_fp32_ratios
from serving.bundle import Manifest, load_bundle

__all__ = [
    "BACKEND_GROUPS",
    "BENCH_BACKENDS",
    "BundleUnderTest",
    "EngineBenchConfig",
    "batch_sizes_for",
    "bench_engine",
    "label_bundles",
    "measure_point",
    "open_engine",
    "open_first",
    "parse_backends",
    "random_images",
    "student_teacher_ratios",
]

BENCH_BACKENDS = (
    "tensorrt",
    "onnxruntime-cuda",
    "onnxruntime-cpu",
    "torch-cuda",
    "torch-cpu",
    "torch-compiled-cuda",
    "torch-compiled-cpu",
)
"""Every backend the engine benchmark knows, fastest-first (the order ``auto`` tries them in serve/index)."""
BACKEND_GROUPS = {
    "auto": BENCH_BACKENDS,
    "cpu": ("onnxruntime-cpu", "torch-cpu", "torch-compiled-cpu"),
    "gpu": ("tensorrt", "onnxruntime-cuda", "torch-cuda", "torch-compiled-cuda"),
}
"""Shorthands accepted by ``--backends``."""
_LOG = logging.getLogger("serving.benchmarks")


@dataclass(frozen=True)
class EngineBenchConfig:
    """``batches`` to try (capped at each bundle's max), ``warmup`` untimed calls per point, then ``iters``
    timed calls or ``seconds`` of calls per point; ``threads`` for ONNX Runtime / torch; image ``seed``."""

    backends: tuple[str, ...] = ("onnxruntime-cpu", "torch-cpu")
    batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    warmup: int = 3
    iters: int | None = None
    seconds: float | None = 2.0
    threads: int = 1
    seed: int = 0


@dataclass(frozen=True)
class BundleUnderTest:
    """A bundle folder, its verified manifest, a display ``label`` and ``role`` ("student" / "teacher")."""

    path: Path
    manifest: Manifest
    label: str
    role: str

    @property
    def cost(self) -> dict[str, Any]:
        """This bundle's own model cost {"params", "flops"} (the manifest's ``cost.student``), or {}."""
        own = self.manifest.cost.get("student")
        return dict(own) if isinstance(own, dict) else {}


def parse_backends(text: str) -> tuple[str, ...]:
    """ "auto" / "cpu" / "gpu" or a comma list of BENCH_BACKENDS; raises ValueError naming unknown names."""
    names: list[str] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        group = BACKEND_GROUPS.get(part, (part,))
        names.extend(name for name in group if name not in names)
    unknown = [name for name in names if name not in BENCH_BACKENDS]
    if unknown or not names:
        raise ValueError(
            f"--backends {text!r}: unknown backend(s) {unknown or '(none given)'}; choose from "
            f"{', '.join(BACKEND_GROUPS)} or a comma list of {', '.join(BENCH_BACKENDS)}"
        )
    return tuple(names)


def _is_teacher_cost(manifest: Manifest) -> bool:
    student, teacher = manifest.cost.get("student"), manifest.cost.get("teacher")
    return bool(student) and student == teacher


def label_bundles(
    paths: Sequence[Path], labels: Sequence[str] | None = None, roles: Sequence[str] | None = None
) -> list[BundleUnderTest]:
    """Load and verify each bundle. Labels default to the manifest names (made unique). Roles: ``roles`` if
    given; else the bundle labelled "teacher" if a label is exactly that; else the bundle whose manifest
    cost.student == cost.teacher. Raises BundleError, ValueError (counts of labels/roles != bundles)."""
    for name, given in (("--labels", labels), ("roles", roles)):
        if given is not None and len(given) != len(paths):
            raise ValueError(
                f"{name} has {len(given)} entries for {len(paths)} bundle(s); give one per --bundle"
            )
    manifests = [load_bundle(path) for path in paths]
    chosen = list(labels) if labels is not None else [m.name for m in manifests]
    seen: dict[str, int] = {}
    unique = []
    for label in chosen:
        seen[label] = seen.get(label, 0) + 1
        unique.append(label if seen[label] == 1 else f"{label}-{seen[label]}")
    if roles is None:
        named = [label.lower() == "teacher" for label in unique]
        is_teacher = named if any(named) else [_is_teacher_cost(m) for m in manifests]
        roles = ["teacher" if flag else "student" for flag in is_teacher]
    return [
        BundleUnderTest(Path(p), m, label, role)
        for p, m, label, role in zip(paths, manifests, unique, roles, strict=True)
    ]


@contextmanager
def _torch_threads_restored() -> Iterator[None]:
    """Put torch's thread count back afterwards when torch was already imported (callers share it)."""
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    try:
        yield
    finally:
        if before is not None:
            torch.set_num_threads(before)


def _torch_threads(threads: int) -> int:
    import torch

    torch.set_num_threads(threads)
    return int(torch.get_num_threads())


def open_engine(bundle: Path, manifest: Manifest, backend: str, threads: int, spin: bool = True) -> Engine:
    """An engine for one benchmark backend name (``spin``: ONNX Runtime's intra-op spin-waiting); raises
    BackendUnavailable (with the reason), ValueError."""
    if backend.startswith("onnxruntime-"):
        from serving.backends.onnxruntime_backend import OnnxRuntimeEngine

        return OnnxRuntimeEngine(
            bundle, manifest, device=backend.removeprefix("onnxruntime-"), threads=threads, spin=spin
        )
    if backend.startswith("torch-"):
        try:
            _torch_threads(threads)
        except ImportError as exc:
            raise BackendUnavailable(f"torch is not installed ({exc}); pip install torch") from exc
        from serving.backends.torch_backend import TorchEngine

        device = backend.rsplit("-", 1)[1]
        return TorchEngine(bundle, manifest, device=device, compile=backend.startswith("torch-compiled"))
    if backend == "tensorrt":
        return create_engine(bundle, manifest, backend="tensorrt")
    raise ValueError(f"unknown benchmark backend {backend!r}; choose one of {', '.join(BENCH_BACKENDS)}")


def open_first(
    bundle: Path, manifest: Manifest, backends: Sequence[str], threads: int, spin: bool = True
) -> tuple[Engine, str, list[dict[str, str]]]:
    """The first of ``backends`` that opens: (engine, its benchmark name, [{backend, reason}] skipped).
    Raises BackendUnavailable listing every reason when none opens."""
    skipped: list[dict[str, str]] = []
    for name in backends:
        try:
            return open_engine(bundle, manifest, name, threads, spin), name, skipped
        except BackendUnavailable as exc:
            skipped.append({"backend": name, "reason": str(exc)})
            _LOG.info("backend %s skipped: %s", name, exc)
    lines = "\n  ".join(f"{s['backend']}: {s['reason']}" for s in skipped)
    raise BackendUnavailable(f"no backend can run bundle {bundle} here:\n  {lines}")


def random_images(manifest: Manifest, n: int, seed: int) -> np.ndarray:
    """uint8 (n, H, W, 3) uniform random pixels at the manifest's input size."""
    spec = manifest.input
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, spec.height, spec.width, spec.channels), dtype=np.uint8)


def batch_sizes_for(manifest: Manifest, batches: Sequence[int]) -> list[int]:
    """``batches`` within 1..manifest.batch.max, plus the max itself when a requested size exceeded it."""
    top = manifest.batch.max
    chosen = sorted({b for b in batches if 1 <= b <= top})
    if any(b > top for b in batches) and top not in chosen:
        chosen.append(top)
    return chosen


def measure_point(
    engine: Engine,
    batch: int,
    *,
    warmup: int,
    iters: int | None = None,
    seconds: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Time ``engine.embed`` on one random batch: {"batch", "images_per_s", "first_call_ms", calls,
    mean/min/p50/p90/p99/max _ms}. images/s = batch * calls / total timed seconds."""
    images = random_images(engine.manifest, batch, seed)
    samples, first = time_calls(lambda: engine.embed(images), warmup=warmup, iters=iters, seconds=seconds)
    point: dict[str, Any] = {"batch": batch, **percentiles_ms(samples)}
    point["images_per_s"] = batch * len(samples) / sum(samples)
    point["first_call_ms"] = first * 1000.0
    return point


def _engine_only(engine: Engine, batch: int, iters: int, seed: int) -> dict[str, Any]:
    timer = getattr(engine, "time_engine_only", None)
    if not callable(timer):
        return {
            "batch": batch,
            "skipped": f"{type(engine).__name__} does not expose time_engine_only(images, iters); only "
            "end-to-end latency (host-device copies included) was measured",
        }
    samples = list(timer(random_images(engine.manifest, batch, seed), iters))
    return {"batch": batch, **percentiles_ms(samples), "images_per_s": batch * len(samples) / sum(samples)}


def _open_all(
    bundles: Sequence[BundleUnderTest], backend: str, threads: int, unavailable: list[dict[str, str]]
) -> list[tuple[BundleUnderTest, Engine]]:
    opened = []
    for bundle in bundles:
        try:
            opened.append((bundle, open_engine(bundle.path, bundle.manifest, backend, threads)))
        except BackendUnavailable as exc:
            unavailable.append({"bundle": bundle.label, "backend": backend, "reason": str(exc)})
            _LOG.info("%s on %s: unavailable: %s", bundle.label, backend, exc)
    return opened


def _bench_backend(
    bundles: Sequence[BundleUnderTest],
    backend: str,
    cfg: EngineBenchConfig,
    unavailable: list[dict[str, str]],
) -> list[dict[str, Any]]:
    """One result per bundle that opens with ``backend``; batch sizes interleave bundles to share drift."""
    opened = _open_all(bundles, backend, cfg.threads, unavailable)
    results = [
        {"bundle": b.label, "role": b.role, "backend": backend, "engine": e.describe(), "points": []}
        for b, e in opened
    ]
    sizes = sorted({size for b, _ in opened for size in batch_sizes_for(b.manifest, cfg.batches)})
    for size in sizes:
        for (bundle, engine), result in zip(opened, results, strict=True):
            if size not in batch_sizes_for(bundle.manifest, cfg.batches):
                continue
            point = measure_point(
                engine, size, warmup=cfg.warmup, iters=cfg.iters, seconds=cfg.seconds, seed=cfg.seed
            )
            result["points"].append(point)
            _LOG.info(
                "%s %s batch %d: %.1f images/s, p50 %.2f ms",
                bundle.label,
                backend,
                size,
                point["images_per_s"],
                point["p50_ms"],
            )
    for (_, engine), result in zip(opened, results, strict=True):
        if backend == "tensorrt":
            iters = cfg.iters or 50
            result["engine_only"] = [
                _engine_only(engine, p["batch"], iters, cfg.seed) for p in result["points"]
            ]
    return results


def bench_engine(bundles: Sequence[BundleUnderTest], cfg: EngineBenchConfig) -> dict[str, Any]:
    """Benchmark every bundle on every backend of ``cfg``. Returns {"config", "threads", "bundles",
    "results": [{bundle, role, backend, engine, points, [engine_only]}], "unavailable": [{bundle, backend,
    reason}], "ratios": `student_teacher_ratios`, "int8_ratios": `precision.int8_fp32_ratios`}."""
    if not bundles:
        raise ValueError("no bundle to benchmark; give at least one --bundle DIR")
    unavailable: list[dict[str, str]] = []
    results: list[dict[str, Any]] = []
    with _torch_threads_restored():
        for backend in cfg.backends:
            results.extend(_bench_backend(bundles, backend, cfg, unavailable))
    return {
        "config": {
            "backends": list(cfg.backends),
            "batches": list(cfg.batches),
            "warmup": cfg.warmup,
            "iters": cfg.iters,
            "seconds": cfg.seconds,
            "seed": cfg.seed,
        },
        "threads": {"onnxruntime_intra_op": cfg.threads, "torch": cfg.threads},
        "bundles": [_bundle_facts(b) for b in bundles],
        "results": results,
        "unavailable": unavailable,
        "ratios": student_teacher_ratios(bundles, results),
        "int8_ratios": int8_fp32_ratios(bundles, results),
    }


def _bundle_facts(bundle: BundleUnderTest) -> dict[str, Any]:
    spec = bundle.manifest
    return {
        "label": bundle.label,
        "role": bundle.role,
        "name": spec.name,
        "path": bundle.path.as_posix(),
        "input_hw": [spec.input.height, spec.input.width],
        "dim": spec.output.dim,
        "precision": spec.precision,
        "batch": {"min": spec.batch.min, "opt": spec.batch.opt, "max": spec.batch.max},
        "cost": bundle.cost,
        "sha256": spec.sha256(),
    }


def _ratio(numerator: Any, denominator: Any) -> float | None:
    try:
        return float(numerator) / float(denominator) if float(denominator) > 0 else None
    except (TypeError, ValueError):
        return None


def student_teacher_ratios(
    bundles: Sequence[BundleUnderTest], results: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """For the one teacher and each student, per backend and common batch size: images/s of both and
    throughput_ratio (student / teacher), p50 of both and latency_ratio (teacher / student), and the
    flops_ratio / params_ratio (teacher / student, from each bundle's own manifest cost; None if absent).
    Empty unless exactly one bundle has role "teacher"."""
    teachers = [b for b in bundles if b.role == "teacher"]
    if len(teachers) != 1:
        return []
    teacher = teachers[0]
    points = {(r["bundle"], r["backend"]): {p["batch"]: p for p in r["points"]} for r in results}
    rows = []
    for student in (b for b in bundles if b.role != "teacher"):
        flops = _ratio(teacher.cost.get("flops"), student.cost.get("flops"))
        params = _ratio(teacher.cost.get("params"), student.cost.get("params"))
        for backend in dict.fromkeys(r["backend"] for r in results):
            mine, theirs = points.get((student.label, backend), {}), points.get((teacher.label, backend), {})
            for batch in sorted(set(mine) & set(theirs)):
                s, t = mine[batch], theirs[batch]
                rows.append(
                    {
                        "student": student.label,
                        "teacher": teacher.label,
                        "backend": backend,
                        "batch": batch,
                        "student_images_per_s": s["images_per_s"],
                        "teacher_images_per_s": t["images_per_s"],
                        "throughput_ratio": _ratio(s["images_per_s"], t["images_per_s"]),
                        "student_p50_ms": s["p50_ms"],
                        "teacher_p50_ms": t["p50_ms"],
                        "latency_ratio": _ratio(t["p50_ms"], s["p50_ms"]),
                        "flops_ratio": flops,
                        "params_ratio": params,
                    }
                )
    return rows
