"""The export chain: run dir -> checked model bundle. Every step is followed by a parity gate on real images.

rebuild slim net -> gate (vs full width, pruned rows zeroed) -> fold BN + indicator -> gate -> wrap (uint8 in,
unit embeddings out) -> ONNX (+ FLOPs check against the manifest cost) -> gate (ONNX Runtime vs torch) ->
torch.export program -> gate -> TensorRT plan where possible -> gate (looser FP16/INT8 tolerance) -> manifest.
With ``precision=int8`` the steps after the fold gate are ``export.int8_export``'s instead: fp32 ONNX -> gate
-> ONNX Runtime static int8 quantisation -> retrieval gate (cosine + mAP against fp32), and the bundle holds
the int8 ``model.onnx`` only. With --compatible-with on an fp32 export, the compatibility gate (asymmetric retrieval
against a teacher bundle) runs before the manifest.
A failed gate raises ParityGateError before anything appears at the output path.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch
from torch import nn

from export.bundle_writer import BundleStage, make_manifest
from export.compatibility_gate import compatibility_declaration
from export.config import ExportConfig
from export.deploy_wrapper import DeployWrapper
from export.errors import ExportError, RunDirError
from export.fold import fold_network
from export.gate_images import calibration_images, gate_images
from export.int8_export import int8_model_files
from export.onnx_export import ONNX_FILE, export_onnx, onnxruntime_embedder
from export.onnx_flops import check_flops
from export.parity import run_gate
from export.rebuild import build_reference, build_slim
from export.run_dir import RunDir, load_run_dir
from export.tensorrt_build import (
    TensorRTBuildError,
    TensorRTUnavailable,
    build_engine,
    tensorrt_embedder,
    tensorrt_unavailable_reason,
)
from export.torch_program import export_program, program_embedder
from serving.bundle import Manifest
from training.arch_spec import ArchSpec, ArchSpecError
from training.cost import deployed_cost
from training.data.transforms import normalize_uint8

__all__ = ["ONNX_FILE", "PLAN_FILE", "PROGRAM_FILE", "ExportResult", "export_bundle"]

PROGRAM_FILE = "model.pt2"
PLAN_FILE = "model.plan"


@dataclass(frozen=True)
class ExportResult:
    """Where the bundle went, its manifest, and (when no plan was built) the one-line reason why."""

    bundle: Path
    manifest: Manifest
    tensorrt_note: str | None


def _net_embedder(net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> Callable:
    """uint8 batch -> the training eval normalisation -> ``net`` -> numpy embeddings."""

    def embed(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(normalize_uint8(images, mean, std)).numpy()

    return embed


def _wrapper_embedder(wrapper: nn.Module) -> Callable:
    def embed(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return wrapper(torch.from_numpy(np.ascontiguousarray(images))).numpy()

    return embed


def _tensorrt_plan(mode: str, precision: str) -> str | None:
    """None when a plan will be built; otherwise why not. Raises TensorRTUnavailable in "required" mode."""
    if mode == "off":
        return "off (--tensorrt off)"
    if precision == "int8":
        return ("not built for precision int8 (the ONNX Runtime int8 CPU graph); a TensorRT INT8 engine is "
                "--tensorrt-precision int8 on an fp32 export")
    reason = tensorrt_unavailable_reason()
    if reason is not None and mode == "required":
        raise TensorRTUnavailable(reason)
    return None if reason is None else f"skipped: {reason}; the bundle has the ONNX Runtime and torch backends"


def _costs(run: RunDir) -> dict[str, Any]:
    student = deployed_cost(run.spec).to_dict()
    if run.kind == "teacher" or run.teacher_run is None:
        return {"student": student, "teacher": dict(student)}
    arch_path = run.teacher_run / "arch.json"
    try:
        teacher_spec = ArchSpec.load(arch_path)
    except ArchSpecError as exc:
        raise RunDirError(f"{run.path / 'config.json'}: cdd.teacher_run points to {run.teacher_run}: {exc}; the "
                          "teacher's run dir must be readable (relative to the working directory)") from exc
    return {"student": student, "teacher": deployed_cost(teacher_spec).to_dict()}


def _provenance(run: RunDir, config: ExportConfig, tensorrt_note: str | None) -> dict[str, Any]:
    """Where the bundle came from; ``tensorrt`` says "built" or why the bundle has no plan."""
    return {
        "run_dir": str(run.path),
        "run_kind": run.kind,
        "epoch": run.epoch,
        "checkpoint_path": str(run.checkpoint_path),
        "checkpoint_sha256": run.checkpoint_sha256,
        "teacher_run": None if run.teacher_run is None else str(run.teacher_run),
        "arch": run.spec.to_dict(),
        "training_config": run.config,
        "export_config": config.to_dict(),
        "metrics": run.metrics,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "onnx": onnx.__version__,
                     "onnxruntime": onnxruntime.__version__, "numpy": np.__version__},
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "tensorrt": "built" if tensorrt_note is None else tensorrt_note,
    }


def _torch_gates(run: RunDir, config: ExportConfig, images: np.ndarray) -> tuple[DeployWrapper, dict[str, Any]]:
    """rebuild -> gate -> fold -> gate; returns the deploy wrapper around the folded network."""
    sizes, gates = config.parity_batch_sizes, config.gates
    slim, reference = build_slim(run), build_reference(run)
    parity = {"rebuild": run_gate("rebuild", _net_embedder(reference, run.mean, run.std),
                                  _net_embedder(slim, run.mean, run.std), images, sizes, gates.rebuild)}
    folded = fold_network(slim)
    parity["fold"] = run_gate("fold", _net_embedder(slim, run.mean, run.std),
                              _net_embedder(folded, run.mean, run.std), images, sizes, gates.fold)
    return DeployWrapper(folded, run.mean, run.std).eval(), parity


def _model_files(stage: BundleStage, wrapper: DeployWrapper, run: RunDir, config: ExportConfig,
                 images: np.ndarray, flops: int) -> dict[str, Any]:
    """ONNX -> FLOPs check -> gate -> torch program -> gate, written into the stage."""
    sizes, gates, batch = config.parity_batch_sizes, config.gates, config.batch
    reference = _wrapper_embedder(wrapper)
    onnx_path = export_onnx(wrapper, stage.path / ONNX_FILE, run.spec.input_size, config.opset)
    check_flops(onnx_path, flops)
    parity = {"onnxruntime": run_gate("onnxruntime", reference, onnxruntime_embedder(onnx_path), images, sizes,
                                      gates.onnxruntime)}
    program = export_program(wrapper, stage.path / PROGRAM_FILE, run.spec.input_size, (batch.min, batch.max))
    parity["torch_program"] = run_gate("torch_program", reference, program_embedder(program), images, sizes,
                                       gates.torch_program)
    stage.record(ONNX_FILE, "onnxruntime")
    stage.record(PROGRAM_FILE, "torch")
    return parity


def _tensorrt_files(stage: BundleStage, wrapper: DeployWrapper, run: RunDir, config: ExportConfig,
                    images: np.ndarray) -> tuple[dict[str, Any], dict[str, Any]]:
    """Build and gate the TensorRT plan; returns (backend stamp, parity)."""
    trt_cfg, batch = config.tensorrt, config.batch
    calib = None
    if trt_cfg.int8:
        calib = calibration_images(run.dataset, run.data_root, run.spec.input_size, trt_cfg.calibration_images,
                                   config.gates.seed)
    stamp = build_engine(stage.path / ONNX_FILE, stage.path / PLAN_FILE, run.spec.input_size,
                         (batch.min, batch.opt, batch.max), trt_cfg.workspace_mib, calib, trt_cfg.calibration_batch)
    key = "tensorrt_int8" if trt_cfg.int8 else "tensorrt_fp16"
    parity = run_gate("tensorrt", _wrapper_embedder(wrapper), tensorrt_embedder(stage.path / PLAN_FILE), images,
                      config.parity_batch_sizes, getattr(config.gates, key), setting=f"gates.{key}")
    stage.record(PLAN_FILE, "tensorrt")
    return stamp, parity


def _tensorrt_plan_or_note(stage: BundleStage, wrapper: DeployWrapper, run: RunDir, config: ExportConfig,
                           images: np.ndarray, backends: dict[str, Any], parity: dict[str, Any]) -> str | None:
    """Build and gate the plan into ``backends`` / ``parity``; None when it was built. In "auto" mode any
    failure (unsupported TensorRT, parse or build error, a failed TensorRT gate) becomes the returned skip
    note and the plan is left out; in "required" mode it is raised (as TensorRTBuildError unless it is
    already an ExportError, such as ParityGateError)."""
    try:
        backends["tensorrt"], parity["tensorrt"] = _tensorrt_files(stage, wrapper, run, config, images)
    except Exception as exc:  # TensorRT, its graph converters and the gate fail in many ways
        if config.tensorrt.mode == "required":
            if isinstance(exc, ExportError):
                raise
            raise TensorRTBuildError(f"the TensorRT build failed: {type(exc).__name__}: {exc}") from exc
        (stage.path / PLAN_FILE).unlink(missing_ok=True)
        stage.files.pop(PLAN_FILE, None)
        return (f"skipped: no TensorRT plan ({type(exc).__name__}: {str(exc)[:300]}); the bundle has "
                "the ONNX Runtime and torch backends")
    return None


def _compatibility(onnx_path: Path, run: RunDir, config: ExportConfig) -> list[dict[str, Any]]:
    """The compatibility declaration (asymmetric retrieval) when ``compatibility.teacher_bundle`` is set."""
    compat = config.compatibility
    if not compat.teacher_bundle:
        return []
    compat_weight = float((run.config.get("loss") or {}).get("compat_weight", 0.0))
    return [compatibility_declaration(onnx_path, run.spec.input_size, run.spec.embedding_dim, run.dataset,
                                      run.data_root, compat.teacher_bundle, compat.max_map_drop, config.batch.max,
                                      compat_weight=compat_weight, teacher_run=run.teacher_run)]


def export_bundle(run_dir: str | Path, out_dir: str | Path, config: ExportConfig) -> ExportResult:
    """Export the run at ``run_dir`` to a bundle at ``out_dir`` (replacing a bundle already there).

    Raises RunDirError (bad run dir), ParityGateError (a gate failed), FlopsMismatchError, TensorRTUnavailable
    (``tensorrt.mode`` "required" without TensorRT/GPU), BundleWriteError; in every case nothing is written
    at ``out_dir``."""
    run = load_run_dir(run_dir)
    tensorrt_note = _tensorrt_plan(config.tensorrt.mode, config.precision)
    cost = _costs(run)
    with BundleStage(out_dir) as stage:  # checks --out first; removed unless committed
        images = gate_images(run.dataset, run.data_root, run.spec.input_size, config.gates.images,
                             config.gates.seed)
        wrapper, parity = _torch_gates(run, config, images)
        quantization: dict[str, Any] = {}
        compatible: tuple[str, ...] = ()
        if config.precision == "int8":
            int8 = int8_model_files(stage, wrapper, _wrapper_embedder(wrapper), run, config, images,
                                    cost["student"]["flops"])
            parity.update(int8.parity)
            quantization, compatible = int8.quantization, int8.compatible_with
            backends: dict[str, Any] = {"onnxruntime": ONNX_FILE}
        else:
            parity.update(_model_files(stage, wrapper, run, config, images, cost["student"]["flops"]))
            backends = {"onnxruntime": ONNX_FILE, "torch": PROGRAM_FILE}
        if tensorrt_note is None:
            tensorrt_note = _tensorrt_plan_or_note(stage, wrapper, run, config, images, backends, parity)
        batch = config.batch
        declarations = _compatibility(stage.path / ONNX_FILE, run, config)
        if declarations:  # asymmetric retrieval: the teacher's sha256 accepted, the measured numbers kept
            parity["compatibility"] = declarations
            compatible = tuple(dict.fromkeys([*compatible, *(d["bundle_sha256"] for d in declarations)]))
        manifest = make_manifest(
            name=Path(out_dir).resolve().name, input_size=run.spec.input_size, dim=run.spec.embedding_dim,
            mean=run.mean, std=run.std, batch=(batch.min, batch.opt, batch.max), files=stage.files,
            backends=backends, cost=cost, parity=parity, provenance=_provenance(run, config, tensorrt_note),
            precision=config.precision, quantization=quantization, compatible_with=compatible,
        )
        bundle = stage.commit(manifest)
    return ExportResult(bundle=bundle, manifest=manifest, tensorrt_note=tensorrt_note)
