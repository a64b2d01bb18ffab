"""The whole export chain on real tiny run dirs: manifest contents, gates, failures that write nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from tiny_runs import MEAN, STD, TinyRuns

from export.__main__ import main
from export.config import ExportConfigError, load_export_config
from export.errors import RunDirError
from export.gate_images import gate_images
from export.onnx_flops import count_onnx_macs
from export.parity import ParityGateError
from export.pipeline import ExportResult, export_bundle
from serving.bundle import BundleError, load_bundle, sha256_file
from training.arch_spec import ArchSpec
from training.cost import deployed_cost


def _snapshot(directory: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(directory.iterdir())}


def _hidden(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_manifest_describes_the_graph(student_bundle: ExportResult, tiny_run_dir: TinyRuns) -> None:
    manifest = load_bundle(student_bundle.bundle, verify=True)
    spec = ArchSpec.load(tiny_run_dir.student50 / "arch.json")
    assert manifest.schema_version == 1
    assert (manifest.input.name, manifest.input.dtype, manifest.input.layout) == ("images", "uint8", "NHWC")
    assert (manifest.input.height, manifest.input.width, manifest.input.channels) == (64, 32, 3)
    assert (manifest.output.name, manifest.output.dim, manifest.output.normalized) == ("embeddings", 16, True)
    assert manifest.metric == "cosine"
    assert (manifest.batch.min, manifest.batch.opt, manifest.batch.max) == (1, 16, 64)
    pre = manifest.preprocess
    assert (pre.policy, pre.interpolation, pre.color, pre.normalization) == ("stretch", "bilinear", "RGB", "in_graph")
    assert list(pre.mean) == MEAN and list(pre.std) == STD
    assert manifest.backends["onnxruntime"] == "model.onnx" and manifest.backends["torch"] == "model.pt2"
    assert manifest.cost["student"] == deployed_cost(spec).to_dict()
    teacher = deployed_cost(ArchSpec.load(tiny_run_dir.teacher / "arch.json")).to_dict()
    assert manifest.cost["teacher"] == teacher
    assert manifest.cost["student"]["flops"] < teacher["flops"]


def test_every_gate_is_recorded_within_tolerance(student_bundle: ExportResult) -> None:
    parity = student_bundle.manifest.parity
    assert {"rebuild", "fold", "onnxruntime", "torch_program"} <= set(parity)
    for gate, numbers in parity.items():
        assert numbers["batch_sizes"] == [1, 7, 64], gate
        assert numbers["max_abs_err"] <= numbers["tolerance"]["max_abs_err"], gate
        assert numbers["min_cosine"] >= numbers["tolerance"]["min_cosine"], gate
        assert numbers["images"] == 9  # all query + gallery images of the tiny dataset


def test_files_and_provenance(student_bundle: ExportResult, tiny_run_dir: TinyRuns) -> None:
    manifest, bundle = student_bundle.manifest, student_bundle.bundle
    for name, info in manifest.files.items():
        assert info["sha256"] == sha256_file(bundle / name) and info["bytes"] == (bundle / name).stat().st_size
    prov = manifest.provenance
    assert prov["checkpoint_sha256"] == sha256_file(tiny_run_dir.student50 / "checkpoint.pt")
    assert prov["run_kind"] == "student" and prov["epoch"] == 3
    assert prov["metrics"] == {"mAP": 12.5, "rank1": 30.0}
    assert prov["training_config"]["data"]["dataset"] == "market1501"
    assert prov["export_config"]["opset"] == 17 and prov["export_config"]["batch"]["max"] == 64
    assert {"torch", "onnx", "onnxruntime"} <= set(prov["versions"]) and prov["created_utc"].endswith("+00:00")
    json.dumps(manifest.to_dict())  # JSON-serialisable throughout


def test_tampered_bundle_is_refused(student_bundle: ExportResult, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(student_bundle.bundle, tmp_path / "bundle"))
    data = bytearray((copy / "model.onnx").read_bytes())
    data[-1] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.onnx: sha256"):
        load_bundle(copy)


def test_onnx_flops_equal_manifest_flops(student_bundle: ExportResult) -> None:
    flops = student_bundle.manifest.cost["student"]["flops"]
    assert count_onnx_macs(student_bundle.bundle / "model.onnx") == flops


def test_bundle_backends_agree_and_are_unit_norm(student_bundle: ExportResult, tiny_run_dir: TinyRuns) -> None:
    images = gate_images("market1501", str(tiny_run_dir.data_root), (64, 32), count=9, seed=0)
    session = ort.InferenceSession(str(student_bundle.bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    from_onnx = session.run(["embeddings"], {"images": images})[0]
    program = torch.export.load(str(student_bundle.bundle / "model.pt2")).module()
    with torch.no_grad():
        from_program = program(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(np.linalg.norm(from_onnx, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(from_program, from_onnx, atol=1e-5)


def test_teacher_bundle_costs_are_the_teacher(teacher_bundle: ExportResult, tiny_run_dir: TinyRuns) -> None:
    manifest = load_bundle(teacher_bundle.bundle)
    teacher = deployed_cost(ArchSpec.load(tiny_run_dir.teacher / "arch.json")).to_dict()
    assert manifest.cost == {"student": teacher, "teacher": teacher}
    assert manifest.provenance["run_kind"] == "teacher"
    assert teacher_bundle.tensorrt_note == "off (--tensorrt off)" and "tensorrt" not in manifest.backends


@pytest.mark.parametrize("gate", ["fold", "onnxruntime"])
def test_failed_gate_writes_nothing_and_keeps_the_old_bundle(student_bundle: ExportResult, tiny_run_dir: TinyRuns,
                                                             tmp_path: Path, gate: str) -> None:
    out = Path(shutil.copytree(student_bundle.bundle, tmp_path / "bundle"))
    before = _snapshot(out)
    config = load_export_config([f"gates.{gate}.max_abs_err=0", "tensorrt.mode=off", "batch.max=8",
                                 "batch.opt=8"])
    expected = rf"parity gate '{gate}' failed: batch 1: max_abs_err .*gates\.{gate}\.max_abs_err 0"
    with pytest.raises(ParityGateError, match=expected):
        export_bundle(tiny_run_dir.student18, out, config)
    assert _snapshot(out) == before
    assert _hidden(tmp_path) == []


def test_cli_reports_a_failed_gate(tiny_run_dir: TinyRuns, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["--run", str(tiny_run_dir.student18), "--out", str(tmp_path / "b"), "--tensorrt", "off",
                 "--set", "gates.fold.max_abs_err=0"])
    assert code == 3
    assert "parity gate 'fold' failed" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cli_rejects_unknown_config_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["--run", str(tmp_path), "--out", str(tmp_path / "b"), "--set", "gates.onnxruntim.max_abs_err=1"])
    assert code == 1
    err = capsys.readouterr().err
    assert "gates.onnxruntim.max_abs_err: unknown key" in err and "gates.onnxruntime.max_abs_err" in err


def test_bad_run_dirs_write_nothing(tiny_run_dir: TinyRuns, tmp_path: Path) -> None:
    run = Path(shutil.copytree(tiny_run_dir.student18, tmp_path / "run"))
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    ckpt["model"]["backbone.layer2.1.conv2.weight"] = ckpt["model"]["backbone.layer2.1.conv2.weight"][:, :5]
    torch.save(ckpt, run / "checkpoint.pt")
    config = load_export_config(["tensorrt.mode=off"])
    with pytest.raises(RunDirError, match=r"layer2\.1\.conv2\.weight: spec \(32, 32, 3, 3\) vs weights"):
        export_bundle(run, tmp_path / "bundle", config)
    ckpt["schema_version"] = 0
    torch.save(ckpt, run / "checkpoint.pt")
    with pytest.raises(RunDirError, match="schema_version 0"):
        export_bundle(run, tmp_path / "bundle", config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_missing_teacher_run_is_named(tiny_run_dir: TinyRuns, tmp_path: Path) -> None:
    run = Path(shutil.copytree(tiny_run_dir.student18, tmp_path / "run"))
    config_json = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config_json, "cdd": {"teacher_run": "missing/teacher"}}))
    with pytest.raises(RunDirError, match=r"cdd\.teacher_run points to missing/teacher"):
        export_bundle(run, tmp_path / "bundle", load_export_config(["tensorrt.mode=off"]))
    assert not (tmp_path / "bundle").exists()


def test_config_overrides_are_typed_and_checked() -> None:
    config = load_export_config(["opset=18", "gates.onnxruntime.max_abs_err=1e-6", "tensorrt.int8=true", "batch.max=8",
                                 "batch.opt=4", "gates.odd_batch=3"])
    assert (config.opset, config.gates.onnxruntime.max_abs_err, config.tensorrt.int8) == (18, 1e-6, True)
    assert config.parity_batch_sizes == (1, 3, 8)
    with pytest.raises(ExportConfigError, match="opset must be one of"):
        load_export_config(["opset=13"])
    with pytest.raises(ExportConfigError, match="expected an integer"):
        load_export_config(["batch.max=many"])
    with pytest.raises(ExportConfigError, match="gates.odd_batch must be odd and within batch"):
        load_export_config(["batch.max=4", "batch.opt=4"])
    with pytest.raises(ExportConfigError, match="expected key=value"):
        load_export_config(["opset"])
    with pytest.raises(ExportConfigError, match="tensorrt.int8=yes: expected true or false"):
        load_export_config(["tensorrt.int8=yes"])
