"""`cdd-export --triton-repo`: the exported bundle also lands in a Triton model repository whose config
Triton's ModelConfig protobuf parses and whose shapes are the manifest's."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tiny_runs import TinyRuns

from export.__main__ import main
from serving.bundle import load_bundle, sha256_file

model_config_pb2 = pytest.importorskip(
    "tritonclient.grpc.model_config_pb2", reason="tritonclient is not installed (pip install -e '.[dev]')"
)


def test_export_writes_the_triton_model(tiny_run_dir: TinyRuns, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bundle, repo = tmp_path / "bundle", tmp_path / "triton"
    code = main(["--run", str(tiny_run_dir.student18), "--out", str(bundle), "--tensorrt", "off",
                 "--triton-repo", str(repo), "--triton-name", "student18", "--set", "batch.max=16"])
    assert code == 0, capsys.readouterr().err
    assert "triton: model student18" in capsys.readouterr().out
    manifest = load_bundle(bundle)
    config = model_config_pb2.ModelConfig()
    text_format.Parse((repo / "student18" / "config.pbtxt").read_text(), config)
    assert config.max_batch_size == manifest.batch.max == 16
    assert list(config.input[0].dims) == [manifest.input.height, manifest.input.width, 3]
    assert list(config.output[0].dims) == [manifest.output.dim]
    assert sha256_file(repo / "student18" / "1" / "model.onnx") == manifest.files["model.onnx"]["sha256"]


def test_bad_triton_options_fail_before_exporting(tiny_run_dir: TinyRuns, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    code = main(["--run", str(tiny_run_dir.student18), "--out", str(tmp_path / "b"), "--triton-repo",
                 str(tmp_path / "t"), "--instances", "0"])
    assert code == 2 and "--instances must be >= 1" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
