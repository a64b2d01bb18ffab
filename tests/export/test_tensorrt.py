"""TensorRT: the plan and its gate where TensorRT and a GPU exist; precise skips and errors where not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny_runs import TinyRuns

from export.__main__ import main
from export.config import load_export_config
from export.gate_images import gate_images
from export.onnx_export import onnxruntime_embedder
from export.parity import compare
from export.pipeline import ExportResult, export_bundle
from export.tensorrt_build import (
    TensorRTBuildError,
    TensorRTUnavailable,
    plan_stamp,
    tensorrt_embedder,
    tensorrt_unavailable_reason,
)
from export.tensorrt_graph import fp16_graph, int8_qdq_graph
from export.tensorrt_recipe import UnsupportedTensorRT, build_recipe
from serving.backends.base import BackendUnavailable
from serving.backends.tensorrt_backend import plan_refusal
from serving.backends.tensorrt_stamp import STAMP_KEYS, machine_stamp
from serving.bundle import load_bundle

REASON = tensorrt_unavailable_reason()
needs_tensorrt = pytest.mark.skipif(REASON is not None, reason=REASON or "")
_SMALL = ["batch.max=8", "batch.opt=4", "gates.odd_batch=3"]


@pytest.mark.gpu
@pytest.mark.tensorrt
@needs_tensorrt
def test_plan_is_stamped_and_matches_onnxruntime(student_bundle: ExportResult, tiny_run_dir: TinyRuns) -> None:
    manifest = load_bundle(student_bundle.bundle)
    assert "tensorrt" in manifest.backends, f"no plan was built: {manifest.provenance['tensorrt']}"
    stamp = manifest.backends["tensorrt"]
    assert stamp["file"] == "model.plan" and stamp["precision"] == "fp16"
    assert stamp["gpu"] and stamp["tensorrt"] and "." in stamp["compute_capability"]
    import tensorrt
    import torch

    here = machine_stamp(torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0), tensorrt.__version__)
    assert plan_refusal(stamp, here) == ("model.plan", None)
    assert manifest.provenance["tensorrt"] == "built"
    assert manifest.files["model.plan"]["role"] == "tensorrt"
    parity = manifest.parity["tensorrt"]
    assert parity["batch_sizes"] == [1, 7, 64] and parity["min_cosine"] >= parity["tolerance"]["min_cosine"]
    images = gate_images("market1501", str(tiny_run_dir.data_root), (64, 32), count=9, seed=0)
    found = tensorrt_embedder(student_bundle.bundle / "model.plan")(images)
    expected = onnxruntime_embedder(student_bundle.bundle / "model.onnx")(images)
    assert compare(expected, found).min_cosine > 0.995


@pytest.mark.gpu
@pytest.mark.tensorrt
@needs_tensorrt
def test_int8_plan(tiny_run_dir: TinyRuns, tmp_path: Path) -> None:
    config = load_export_config([*_SMALL, "tensorrt.mode=required", "tensorrt.int8=true",
                                 "tensorrt.calibration_batch=4"])
    result = export_bundle(tiny_run_dir.student18, tmp_path / "b", config)
    assert result.manifest.backends["tensorrt"]["precision"] == "int8"
    assert result.manifest.parity["tensorrt"]["tolerance"]["min_cosine"] == config.gates.tensorrt_int8.min_cosine


@pytest.mark.skipif(REASON is None, reason="TensorRT and a CUDA GPU are available here")
def test_required_without_tensorrt_is_a_clear_error(tiny_run_dir: TinyRuns, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    config = load_export_config([*_SMALL, "tensorrt.mode=required"])
    expected = r"--tensorrt required.*unavailable: (tensorrt not installed|no CUDA)"
    with pytest.raises(TensorRTUnavailable, match=expected):
        export_bundle(tiny_run_dir.student18, tmp_path / "b", config)
    assert main(["--run", str(tiny_run_dir.student18), "--out", str(tmp_path / "b"), "--tensorrt", "required"]) == 1
    assert REASON in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_auto_mode_says_what_happened_in_one_line(tiny_run_dir: TinyRuns, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    args = ["--run", str(tiny_run_dir.student18), "--out", str(tmp_path / "b"), "--tensorrt", "auto"]
    assert main([*args, *[a for s in _SMALL for a in ("--set", s)]]) == 0
    lines = capsys.readouterr().out.splitlines()
    mentions = [line for line in lines if "tensorrt" in line]
    if REASON is None:
        assert any(line.strip().startswith("gate tensorrt") for line in mentions)
        assert (tmp_path / "b" / "model.plan").is_file()
    else:
        note = f"skipped: {REASON}; the bundle has the ONNX Runtime and torch backends"
        assert mentions == [f"  tensorrt: {note}"]
        assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["manifest.json", "model.onnx", "model.pt2"]
        assert load_bundle(tmp_path / "b").provenance["tensorrt"] == note
    assert np.isfinite(load_bundle(tmp_path / "b").parity["onnxruntime"]["max_abs_err"])


def _break_the_build(monkeypatch: pytest.MonkeyPatch) -> str:
    """TensorRT looks usable, and the build fails the way TensorRT 11 fails code written for 10."""
    import export.pipeline

    message = "type object 'tensorrt.tensorrt.BuilderFlag' has no attribute 'FP16'"

    def build_engine(*args, **kwargs):
        raise AttributeError(message)

    monkeypatch.setattr(export.pipeline, "tensorrt_unavailable_reason", lambda: None)
    monkeypatch.setattr(export.pipeline, "build_engine", build_engine)
    return message


def test_auto_turns_any_build_error_into_the_skip_note(tiny_run_dir: TinyRuns, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    message = _break_the_build(monkeypatch)
    args = ["--run", str(tiny_run_dir.student18), "--out", str(tmp_path / "b"), "--tensorrt", "auto"]
    assert main([*args, *[a for s in _SMALL for a in ("--set", s)]]) == 0
    note = f"skipped: no TensorRT plan (AttributeError: {message}); the bundle has the ONNX Runtime and " \
           "torch backends"
    assert f"  tensorrt: {note}" in capsys.readouterr().out.splitlines()
    manifest = load_bundle(tmp_path / "b")
    assert manifest.provenance["tensorrt"] == note and "tensorrt" not in manifest.backends
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["manifest.json", "model.onnx", "model.pt2"]


def test_required_fails_with_the_build_error(tiny_run_dir: TinyRuns, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    message = _break_the_build(monkeypatch)
    config = load_export_config([*_SMALL, "tensorrt.mode=required"])
    with pytest.raises(TensorRTBuildError, match=f"the TensorRT build failed: AttributeError: {message}"):
        export_bundle(tiny_run_dir.student18, tmp_path / "b", config)
    args = ["--run", str(tiny_run_dir.student18), "--out", str(tmp_path / "b"), "--tensorrt", "required"]
    assert main([*args, *[a for s in _SMALL for a in ("--set", s)]]) == 1
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_exporter_stamp_passes_the_backend_check() -> None:
    """The entry build_engine writes into the manifest, read back by the serving backend's check."""
    import json

    entry = json.loads(json.dumps(plan_stamp("model.plan", "fp16", "NVIDIA H100 80GB HBM3", (9, 0), "11.4.0.106",
                                             (1, 16, 64))))
    here = machine_stamp("NVIDIA H100 80GB HBM3", (9, 0), "11.4.0.106")
    assert set(STAMP_KEYS) <= set(entry) and plan_refusal(entry, here) == ("model.plan", None)
    file, reason = plan_refusal(entry, machine_stamp("NVIDIA H100 80GB HBM3", (9, 0), "10.13.3.9"))
    assert file == "model.plan"
    assert reason == ("model.plan was built for another machine: tensorrt is '11.4.0.106' in the plan, '10.13.3.9' "
                      "here; re-export on this machine")
    with pytest.raises(BackendUnavailable, match="manifest backends\\['tensorrt'\\] is 'model.plan'"):
        plan_refusal("model.plan", here)


def test_build_recipe_per_tensorrt_major_version() -> None:
    ten, ten_int8 = build_recipe("10.13.3.9", int8=False), build_recipe("10.16.1.11", int8=True)
    assert (ten.graph, ten.strongly_typed, ten.builder_flags, ten.calibrator) == ("fp32", False, ("FP16",), False)
    assert (ten_int8.builder_flags, ten_int8.calibrator, ten_int8.precision) == (("FP16", "INT8"), True, "int8")
    eleven, eleven_int8 = build_recipe("11.4.0.106", int8=False), build_recipe("11.0.0.114", int8=True)
    assert (eleven.graph, eleven.strongly_typed, eleven.builder_flags, eleven.calibrator) == ("fp16", True, (), False)
    assert (eleven_int8.graph, eleven_int8.builder_flags, eleven_int8.calibrator) == ("int8-qdq", (), False)
    for version in ("8.6.1", "12.0.0"):
        with pytest.raises(UnsupportedTensorRT, match=f"TensorRT {version} is not supported.*tensorrt>=10,<12"):
            build_recipe(version, int8=False)


def test_fp16_graph_keeps_the_interface_and_the_embeddings(student_bundle: ExportResult, tiny_run_dir: TinyRuns,
                                                           tmp_path: Path) -> None:
    """The graph a strongly typed (TensorRT 11) fp16 build parses: fp16 inside, uint8 in, float32 out."""
    import onnx

    path = fp16_graph(student_bundle.bundle / "model.onnx", tmp_path / "fp16.onnx")
    model = onnx.load(str(path))
    assert {t.data_type for t in model.graph.initializer} == {onnx.TensorProto.FLOAT16}
    casts = [n for n in model.graph.node if n.op_type == "Cast"]
    to = [next(a.i for a in n.attribute if a.name == "to") for n in casts]
    assert to == [onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT]  # uint8 -> fp16 first, fp16 -> fp32 last
    images = gate_images("market1501", str(tiny_run_dir.data_root), (64, 32), count=9, seed=0)
    expected = onnxruntime_embedder(student_bundle.bundle / "model.onnx")(images)
    found = onnxruntime_embedder(path)(images)
    assert found.dtype == np.float32 and compare(expected, found).min_cosine > 0.999


def test_int8_qdq_graph_is_signed_and_symmetric(student_bundle: ExportResult, tiny_run_dir: TinyRuns,
                                                tmp_path: Path) -> None:
    """The graph a strongly typed (TensorRT 11) INT8 build parses: int8 Q/DQ with zero points 0, float bias."""
    import onnx
    from onnx import numpy_helper

    images = gate_images("market1501", str(tiny_run_dir.data_root), (64, 32), count=32, seed=1)
    path = int8_qdq_graph(student_bundle.bundle / "model.onnx", tmp_path / "int8.onnx", images)
    model = onnx.load(str(path))
    constants = {t.name: t for t in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    zeros = [constants[n.input[2]] for n in qdq]
    assert len(qdq) > 50 and {z.data_type for z in zeros} == {onnx.TensorProto.INT8}
    assert not any(numpy_helper.to_array(z).any() for z in zeros)
    conv = [n for n in model.graph.node if n.op_type == "Conv"]
    assert all(n.input[2] in constants and constants[n.input[2]].data_type == onnx.TensorProto.FLOAT
               for n in conv if len(n.input) > 2)  # biases stay float (TensorRT has no int32 Q/DQ)
    expected = onnxruntime_embedder(student_bundle.bundle / "model.onnx")(images[:9])
    assert compare(expected, onnxruntime_embedder(path)(images[:9])).min_cosine > 0.98
