"""Atomic bundle writing: staged files, verified manifest, nothing left behind on failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.bundle_writer import BundleStage, BundleWriteError, make_manifest
from serving.bundle import BundleError, load_bundle, sha256_file


def _manifest(stage: BundleStage, name: str = "b"):
    return make_manifest(name=name, input_size=(64, 32), dim=16, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2),
                         batch=(1, 16, 64), files=stage.files, backends={"onnxruntime": "model.onnx"},
                         cost={"student": {"params": 10, "flops": 20}, "teacher": {"params": 30, "flops": 40}},
                         parity={"onnxruntime": {"max_abs_err": 1e-7, "min_cosine": 1.0}},
                         provenance={"checkpoint_sha256": "0" * 64})


def _write_bundle(out: Path, payload: bytes) -> Path:
    with BundleStage(out) as stage:
        (stage.path / "model.onnx").write_bytes(payload)
        stage.record("model.onnx", "onnxruntime")
        return stage.commit(_manifest(stage))


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_commit_writes_a_verified_bundle(tmp_path: Path) -> None:
    out = _write_bundle(tmp_path / "bundle", b"onnx bytes")
    manifest = load_bundle(out, verify=True)
    assert manifest.files["model.onnx"] == {"sha256": sha256_file(out / "model.onnx"), "bytes": 10,
                                            "role": "onnxruntime"}
    assert manifest.input.dtype == "uint8" and manifest.input.layout == "NHWC"
    assert (manifest.input.height, manifest.input.width) == (64, 32)
    assert manifest.preprocess.normalization == "in_graph" and manifest.preprocess.policy == "stretch"
    assert manifest.output.normalized and manifest.metric == "cosine"
    assert _leftovers(tmp_path) == []
    assert oct(out.stat().st_mode & 0o777) == "0o755"
    assert oct((out / "manifest.json").stat().st_mode & 0o777) == "0o644"


def test_tampered_file_is_refused(tmp_path: Path) -> None:
    out = _write_bundle(tmp_path / "bundle", b"onnx bytes")
    (out / "model.onnx").write_bytes(b"onnx bytez")
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(out)


def test_exception_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    with pytest.raises(RuntimeError, match="boom"), BundleStage(out) as stage:
        (stage.path / "model.onnx").write_bytes(b"x")
        raise RuntimeError("boom")
    assert not out.exists()
    assert _leftovers(tmp_path) == []


def test_leaving_without_commit_leaves_nothing(tmp_path: Path) -> None:
    with BundleStage(tmp_path / "bundle") as stage:
        (stage.path / "model.onnx").write_bytes(b"x")
    assert list(tmp_path.iterdir()) == []


def test_existing_bundle_replaced_on_commit_untouched_on_failure(tmp_path: Path) -> None:
    out = _write_bundle(tmp_path / "bundle", b"old")
    old_manifest = (out / "manifest.json").read_bytes()
    with pytest.raises(RuntimeError, match="gate failed"), BundleStage(out) as stage:
        (stage.path / "model.onnx").write_bytes(b"new")
        stage.record("model.onnx", "onnxruntime")
        raise RuntimeError("gate failed")
    assert (out / "model.onnx").read_bytes() == b"old" and (out / "manifest.json").read_bytes() == old_manifest
    _write_bundle(out, b"new")
    assert (out / "model.onnx").read_bytes() == b"new"
    assert load_bundle(out).files["model.onnx"]["bytes"] == 3
    assert _leftovers(tmp_path) == []


def test_refuses_to_replace_a_non_bundle(tmp_path: Path) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(BundleWriteError, match="not a bundle"):
        BundleStage(out)
    (tmp_path / "file").write_text("x")
    with pytest.raises(BundleWriteError, match="not a directory"):
        BundleStage(tmp_path / "file")
    assert (out / "notes.txt").read_text() == "keep me"
    assert _leftovers(tmp_path) == []


def test_empty_directory_can_become_a_bundle(tmp_path: Path) -> None:
    (tmp_path / "bundle").mkdir()
    out = _write_bundle(tmp_path / "bundle", b"x")
    assert load_bundle(out).name == "b"
