"""Loaded files are checked files: manifests that name files outside the bundle or unlisted files are
refused, a file swapped after the manifest was verified is refused when the backend loads it, and backends
whose file the bundle lacks are skipped without importing anything."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from serving.backends import create_engine
from serving.bundle import MANIFEST_NAME, BundleError, load_bundle, sha256_file
from serving.bundle_files import BundleFileError, read_checked_file

ROOT = Path(__file__).resolve().parents[2]


def _copy(tiny_bundle: Path, dest: Path) -> Path:
    shutil.copytree(tiny_bundle, dest)
    return dest


def _edit_manifest(bundle: Path, edit) -> None:
    path = bundle / MANIFEST_NAME
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../model.onnx", "is a path, not a plain file name"),
        ("/etc/hostname", "is a path, not a plain file name"),
        ("sub/model.onnx", "is a path, not a plain file name"),
        ("..", "folder reference"),
        ("model.pt2.copy", "not listed in 'files'"),
    ],
)
def test_backend_files_must_be_plain_listed_names(tiny_bundle, tmp_path, name, message):
    bundle = _copy(tiny_bundle, tmp_path / "bundle")
    _edit_manifest(bundle, lambda data: data["backends"].__setitem__("onnxruntime", name))
    with pytest.raises(BundleFileError, match=rf"backends\['onnxruntime'\] names '{name}'.*{message}"):
        load_bundle(bundle, verify=False)


def test_a_listed_file_that_escapes_the_bundle_is_refused(tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path / "bundle")
    outside = tmp_path / "elsewhere.onnx"
    os.replace(bundle / "model.onnx", outside)
    (bundle / "model.onnx").symlink_to(outside)  # same bytes, same sha256, but outside the folder
    assert sha256_file(bundle / "model.onnx") == load_bundle(bundle, verify=False).files["model.onnx"]["sha256"]
    with pytest.raises(BundleError, match="model.onnx: resolves to .*outside the bundle folder"):
        load_bundle(bundle)


def test_a_listed_file_that_is_missing_is_named(tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path / "bundle")
    (bundle / "model.onnx").unlink()
    with pytest.raises(BundleError, match=r"manifest.json: lists 'model.onnx' but .*model.onnx is missing; re-export"):
        load_bundle(bundle)
    assert load_bundle(bundle, verify=False).files["model.onnx"]  # listed: the check, not the schema, refused it


def test_tampered_file_is_refused_at_load(tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path / "bundle")
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[-1] ^= 0xFF
    (bundle / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model.onnx: sha256 is [0-9a-f]{64}, manifest expects"):
        load_bundle(bundle)


@pytest.mark.parametrize("backend", ["onnxruntime-cpu", "torch"])
def test_file_swapped_after_verification_is_refused_by_the_backend(tiny_bundle, tmp_path, backend):
    bundle = _copy(tiny_bundle, tmp_path / "bundle")
    manifest = load_bundle(bundle)  # verified now
    name = manifest.backends["onnxruntime" if backend.startswith("onnx") else "torch"]
    data = bytearray((bundle / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (bundle / name).write_bytes(bytes(data))  # ... and swapped before the engine opens it
    with pytest.raises(BundleFileError, match=rf"{name}: sha256 is .*modified or corrupted"):
        create_engine(bundle, manifest, backend=backend)


def test_read_checked_file_returns_the_hashed_bytes(tiny_bundle, tiny_manifest):
    data = read_checked_file(tiny_bundle, tiny_manifest.files, "model.onnx")
    assert data == (tiny_bundle / "model.onnx").read_bytes()
    assert len(data) == tiny_manifest.files["model.onnx"]["bytes"]
    with pytest.raises(BundleFileError, match="'manifest.json' is not listed"):
        read_checked_file(tiny_bundle, tiny_manifest.files, MANIFEST_NAME)


_PROBE = """
import sys
from serving.backends import create_engine
engine = create_engine(sys.argv[1], backend="auto")
heavy = sorted(m for m in ("torch", "tensorrt") if m in sys.modules)
print(engine.name, heavy)
"""


def test_auto_backend_imports_nothing_for_files_the_bundle_lacks(tiny_bundle, tmp_path):
    fake = tmp_path / "site" / "tensorrt"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise RuntimeError('tensorrt was imported for a bundle without a plan')\n")
    bundle = _copy(tiny_bundle, tmp_path / "bundle")
    _edit_manifest(bundle, lambda data: data["backends"].pop("torch"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path / "site")])}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(bundle)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] in ("onnxruntime-cpu", "onnxruntime-cuda")
    assert done.stdout.strip().endswith("[]"), done.stdout  # neither torch nor tensorrt imported


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("decode", "rgb16-v9", r"preprocess.decode is 'rgb16-v9', this build decodes by rule 'rgb8-v1'"),
        ("exif_orientation", "yes", "preprocess.exif_orientation must be true or false"),
        ("background", [0, 0, 300], r"preprocess.background must be 3 integers 0..255"),
    ],
)
def test_an_unknown_decoding_policy_is_refused_at_load(tiny_bundle, tmp_path, field, value, message):
    bundle = _copy(tiny_bundle, tmp_path / "bundle")
    _edit_manifest(bundle, lambda data: data["preprocess"].__setitem__(field, value))
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle, verify=False)


def test_the_decoding_policy_round_trips_through_the_manifest(tiny_manifest):
    pre = tiny_manifest.preprocess
    assert (pre.decode, pre.exif_orientation, pre.jpeg_draft, pre.background) == ("rgb8-v1", True, True,
                                                                                  (255, 255, 255))
