"""Triton model repository entries from bundles (`cdd-bundle to-triton`), checked with Triton's own
ModelConfig protobuf (tritonclient) and against the ONNX graph in ONNX Runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import text_format

from serving.bundle import Manifest, sha256_file
from serving.bundle_cli import main as cdd_bundle
from serving.triton_repository import TritonOptions, triton_config

model_config_pb2 = pytest.importorskip(
    "tritonclient.grpc.model_config_pb2", reason="tritonclient is not installed (pip install -e '.[dev]')"
)


def _parse(text: str) -> object:
    config = model_config_pb2.ModelConfig()
    text_format.Parse(text, config)  # unknown fields or wrong types raise ParseError
    return config


def test_to_triton_writes_a_model_triton_can_parse(
    tiny_bundle: Path, tiny_manifest: Manifest, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    assert cdd_bundle(["to-triton", "--bundle", str(tiny_bundle), "--repo", str(repo)]) == 0
    assert "Triton model tiny written" in capsys.readouterr().out
    model = repo / "tiny"
    assert sorted(p.relative_to(model).as_posix() for p in model.rglob("*")) == [
        "1", "1/model.onnx", "cdd-manifest.json", "config.pbtxt"]
    assert sorted(p.name for p in repo.iterdir()) == ["tiny"]  # no staging folder left behind
    config = _parse((model / "config.pbtxt").read_text())
    assert config.name == "tiny" and config.backend == "onnxruntime" and config.max_batch_size == 8
    (inp,), (out,) = config.input, config.output
    assert (inp.name, inp.data_type, list(inp.dims)) == ("images", model_config_pb2.TYPE_UINT8, [32, 16, 3])
    assert inp.format == model_config_pb2.ModelInput.FORMAT_NHWC
    assert (out.name, out.data_type, list(out.dims)) == ("embeddings", model_config_pb2.TYPE_FP32, [16])
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert config.version_policy.latest.num_versions == 1 and len(config.instance_group) == 0
    assert sha256_file(model / "1" / "model.onnx") == tiny_manifest.files["model.onnx"]["sha256"]
    assert json.loads((model / "cdd-manifest.json").read_text())["name"] == "tiny"
    # The graph takes what the config declares (batch dimension first, then dims) and returns dims.
    session = ort.InferenceSession(str(model / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    (graph_in,), (graph_out,) = session.get_inputs(), session.get_outputs()
    assert (graph_in.name, graph_out.name) == (inp.name, out.name)
    batch = np.zeros((config.max_batch_size, *inp.dims), dtype=np.uint8)
    assert session.run(None, {inp.name: batch})[0].shape == (config.max_batch_size, *out.dims)


def test_options_and_replacing_a_model(tiny_bundle: Path, tiny_manifest: Manifest, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    argv = ["to-triton", "--bundle", str(tiny_bundle), "--repo", str(repo), "--name", "reid_small"]
    assert cdd_bundle([*argv, "--instance-kind", "gpu", "--instances", "2", "--max-queue-delay-us", "500"]) == 0
    config = _parse((repo / "reid_small" / "config.pbtxt").read_text())
    assert config.name == "reid_small" and config.dynamic_batching.max_queue_delay_microseconds == 500
    (group,) = config.instance_group
    assert group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU and group.count == 2
    assert cdd_bundle(argv) == 0  # replaced whole
    assert len(_parse((repo / "reid_small" / "config.pbtxt").read_text()).instance_group) == 0
    assert sorted(p.name for p in repo.iterdir()) == ["reid_small"]
    cpu = _parse(triton_config(tiny_manifest, TritonOptions(instance_kind="cpu")))
    assert cpu.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU


def test_bad_bundles_and_names_are_refused(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    assert cdd_bundle(["to-triton", "--bundle", str(tmp_path / "none"), "--repo", str(repo)]) == 1
    assert "manifest" in capsys.readouterr().err
    assert cdd_bundle(["to-triton", "--bundle", str(tiny_bundle), "--repo", str(repo), "--name", "a/b"]) == 1
    assert "model name 'a/b'" in capsys.readouterr().err
    assert cdd_bundle(["to-triton", "--bundle", str(tiny_bundle), "--repo", str(repo), "--instances", "0"]) == 1
    assert "--instances must be >= 1" in capsys.readouterr().err
    assert not repo.exists() or list(repo.iterdir()) == []
