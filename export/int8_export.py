"""The int8 branch of the export chain (``precision=int8``): fp32 ONNX -> gate -> calibrate + quantise ->
choose the format by measurement -> retrieval gate -> the int8 graph becomes the bundle's ``model.onnx``.

Intermediate graphs (fp32, pre-processed, each candidate format) live in a temporary folder that is removed
afterwards; only the chosen int8 graph enters the bundle stage. The bundle keeps the fp32 bundle's contract
(uint8 NHWC RGB in, unit float32 embeddings out) and carries the ONNX Runtime backend only: a torch program
or TensorRT plan would be fp32/fp16 engines whose vectors differ from the int8 graph's.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.bundle_writer import BundleStage
from export.config import ExportConfig, ExportConfigError
from export.deploy_wrapper import DeployWrapper
from export.gate_images import calibration_images
from export.int8_format import time_models
from export.int8_gate import Int8GateError, RetrievalSet, cross_gate, int8_gate, retrieval_set
from export.int8_quantize import OP_TYPES, excluded_nodes, prepare, quantise
from export.onnx_export import ONNX_FILE, export_onnx, onnxruntime_embedder
from export.onnx_flops import check_flops
from export.parity import Embedder, run_gate
from export.run_dir import RunDir
from serving.bundle import BundleError, Manifest, load_bundle

log = logging.getLogger("export")

__all__ = ["Int8Files", "int8_model_files"]


@dataclass(frozen=True)
class Int8Files:
    """What the int8 branch adds to the manifest: ``parity`` ("onnxruntime" fp32 vs torch, "int8" retrieval
    gate) and ``quantization`` (tool, format, calibration settings, excluded nodes, timing); ``compatible_with``
    the sha256 of the fp32 bundle whose indexes the int8 bundle may search (``int8.compatible_with``)."""

    parity: dict[str, Any]
    quantization: dict[str, Any]
    compatible_with: tuple[str, ...] = ()


def _quantised_candidates(work: Path, fp32: Path, run: RunDir, config: ExportConfig) -> tuple[dict, np.ndarray]:
    """{"int8-<format>-<exclude>": QuantisedModel} for every format and exclude setting to try, and the
    calibration images (one calibration, its ranges cached and reused by every candidate)."""
    q = config.int8
    calib = calibration_images(run.dataset, run.data_root, run.spec.input_size, q.calibration_images,
                               q.calibration_seed)
    prepared = prepare(fp32, work / "prepared.onnx")
    formats = ("qdq", "qoperator") if q.format == "auto" else (q.format,)
    excludes = ("none", "first") if q.exclude == "auto" else (q.exclude,)
    models = {f"int8-{fmt}-{ex}": quantise(prepared, work / f"int8-{fmt}-{ex}.onnx", fmt, calib,
                                           q.calibration_method, q.per_channel, q.reduce_range,
                                           excluded_nodes(prepared, ex), work / "ranges.json")
              for fmt in formats for ex in excludes}
    return models, calib


def _gate_fastest(models: dict, timing: dict, fp32: Embedder, images: np.ndarray, data: RetrievalSet,
                  config: ExportConfig) -> tuple[str, dict[str, Any], list[str]]:
    """Gate the candidates fastest first; returns (name of the first that passes, its gate numbers, the
    failures before it). Raises Int8GateError (the last candidate's, naming all tried) when none passes."""
    failures: list[str] = []
    for name in sorted(models, key=lambda candidate: timing["seconds_per_batch"][candidate]):
        try:
            numbers = int8_gate(fp32, onnxruntime_embedder(models[name].path), images, config.parity_batch_sizes,
                                data, config.batch.max, config.gates.int8, config.int8)
        except Int8GateError as exc:
            failures.append(f"{name}: {exc}")
            continue
        return name, numbers, failures
    tried = f"all {len(failures)} int8 candidates failed ({', '.join(models)}); the last one: "
    raise Int8GateError("int8", (tried if len(failures) > 1 else "") + failures[-1].split(": ", 1)[1])


def _check_speedup(name: str, speedup: float, timing: dict[str, Any], config: ExportConfig) -> None:
    """Raise Int8GateError when ``speedup`` (int8 / fp32 images/s) is below ``gates.int8.min_speedup``."""
    wanted = config.gates.int8.min_speedup
    if speedup < wanted:
        per_s = timing["images_per_second"]
        raise Int8GateError("int8", f"{name} runs {per_s[name]:.0f} images/s vs fp32 {per_s['fp32']:.0f} at batch "
                                    f"{timing['batch']} on this CPU, {speedup:.2f}x < gates.int8.min_speedup "
                                    f"{wanted:.2f}; ship the fp32 bundle on this machine, or lower "
                                    "gates.int8.min_speedup (0 records the ratio without gating on it)")


def _fp32_bundle(path: str, run: RunDir) -> tuple[Manifest, Path]:
    """The fp32 bundle named by ``int8.compatible_with``, checked to hold the same network as ``run``."""
    try:
        manifest = load_bundle(path, verify=True)
    except BundleError as exc:
        raise ExportConfigError(f"int8.compatible_with={path}: {exc}") from exc
    found = (manifest.precision, manifest.provenance.get("checkpoint_sha256"), manifest.output.dim,
             (manifest.input.height, manifest.input.width))
    expected = ("fp32", run.checkpoint_sha256, run.spec.embedding_dim, tuple(run.spec.input_size))
    if found != expected:
        raise ExportConfigError(f"int8.compatible_with={path} (--compatible-with with --precision int8): (precision, "
                                f"checkpoint sha256, dim, input size) is {found}, expected {expected}: only an fp32 "
                                "bundle exported from this run's checkpoint can share indexes with its int8 bundle; "
                                "to measure the int8 bundle against another model's bundle (asymmetric retrieval) "
                                "set compatibility.teacher_bundle=BUNDLE instead")
    return manifest, Path(path) / str(manifest.backends["onnxruntime"])


def int8_model_files(stage: BundleStage, wrapper: DeployWrapper, reference: Embedder, run: RunDir,
                     config: ExportConfig, images: np.ndarray, flops: int) -> Int8Files:
    """Export, gate and quantise ``wrapper``; write the chosen int8 graph to ``stage`` as ``model.onnx``
    (role "onnxruntime"). ``reference`` is the torch embedder of ``wrapper``; ``images`` the
    gate images. Raises ParityGateError / Int8GateError (gates), QuantisationError, RunDirError."""
    q, sizes = config.int8, config.parity_batch_sizes
    other = _fp32_bundle(q.compatible_with, run) if q.compatible_with else None  # a bad path fails first
    with tempfile.TemporaryDirectory(prefix="cdd-export-int8-") as tmp:
        work = Path(tmp)
        wrapper = wrapper.with_input_size(run.spec.input_size)  # see DeployWrapper.with_input_size
        fp32 = export_onnx(wrapper, work / "fp32.onnx", run.spec.input_size, config.opset)
        check_flops(fp32, flops)
        parity = {"onnxruntime": run_gate("onnxruntime", reference, onnxruntime_embedder(fp32), images, sizes,
                                          config.gates.onnxruntime)}
        models, calib = _quantised_candidates(work, fp32, run, config)
        timing = time_models({"fp32": fp32, **{name: m.path for name, m in models.items()}}, images,
                             q.timing_batch, q.timing_seconds)
        data = retrieval_set(run.dataset, run.data_root, run.spec.input_size, q.eval_images, config.gates.seed)
        name, parity["int8"], failures = _gate_fastest(models, timing, onnxruntime_embedder(fp32), images, data,
                                                       config)
        chosen, int8 = models[name], onnxruntime_embedder(models[name].path)
        speedup = timing["images_per_second"][name] / timing["images_per_second"]["fp32"]
        _check_speedup(name, speedup, timing, config)
        if speedup < 1.0:
            log.warning("int8 (%s) runs at %.2fx the fp32 graph's images/s at batch %d on this CPU: the fp32 "
                        "bundle is the faster one here (int8 pays on CPUs with AVX-512 VNNI/AMX and on larger "
                        "inputs; see docs/int8.md)", name, speedup, q.timing_batch)
        compatible: tuple[str, ...] = ()
        if other is not None:
            parity["int8"]["compatible_with"] = cross_gate(int8, onnxruntime_embedder(other[1]), data,
                                                           config.batch.max, parity["int8"]["map_fp32"],
                                                           config.gates.int8, q.compatible_with)
            compatible = (other[0].sha256(),)
        shutil.copyfile(chosen.path, stage.path / ONNX_FILE)
    stage.record(ONNX_FILE, "onnxruntime")
    quantization = {
        "tool": "onnxruntime.quantization.quantize_static",
        "format": chosen.format,
        "candidate": name,
        "candidates_timed": sorted(models),
        "candidates_failed": failures,
        "op_types": list(OP_TYPES),
        "activations": "uint8 (asymmetric)",
        "weights": "int8 per-channel (symmetric)" if q.per_channel else "int8 per-tensor (symmetric)",
        "reduce_range": q.reduce_range,
        "calibration": {"split": "train", "images": int(len(calib)), "requested": q.calibration_images,
                        "seed": q.calibration_seed, "method": q.calibration_method},
        "excluded_nodes": list(chosen.excluded),
        "exclude": name.rsplit("-", 1)[1],
        "exclude_setting": q.exclude,
        "timing": timing,
        "speedup_vs_fp32": round(speedup, 4),
    }
    return Int8Files(parity=parity, quantization=quantization, compatible_with=compatible)
