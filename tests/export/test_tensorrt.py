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
from export.tensorrt_build import TensorRTUnavailable, tensorrt_embedder, tensorrt_unavailable_reason
from serving.bundle import load_bundle

REASON = tensorrt_unavailable_reason()
needs_tensorrt = pytest.mark.skipif(REASON is not None, reason=REASON or "")
_SMALL = ["batch.max=8", "batch.opt=4", "gates.odd_batch=3"]


@pytest.mark.gpu
@pytest.mark.tensorrt
@needs_tensorrt
def test_plan_is_stamped_and_matches_onnxruntime(student_bundle: ExportResult, tiny_run_dir: TinyRuns) -> None:
    manifest = load_bundle(student_bundle.bundle)
    stamp = manifest.backends["tensorrt"]
    assert stamp["file"] == "model.plan" and stamp["precision"] == "fp16"
    assert stamp["gpu"] and stamp["tensorrt_version"] and "." in stamp["compute_capability"]
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
        assert mentions == [f"  tensorrt: skipped: {REASON}; the bundle has the ONNX Runtime and torch backends"]
        assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["manifest.json", "model.onnx", "model.pt2"]
    assert np.isfinite(load_bundle(tmp_path / "b").parity["onnxruntime"]["max_abs_err"])
