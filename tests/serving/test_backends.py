"""Inference backends on the tiny bundle: parity between backends, selection, chunking, input checks."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from serving.backends import BACKENDS, BackendUnavailable, create_engine
from serving.backends.onnxruntime_backend import OnnxRuntimeEngine
from serving.backends.tensorrt_backend import stamp_mismatch
from serving.backends.torch_backend import TorchEngine
from serving.bundle import BatchRange, BundleError, InputSpec, sha256_file
from serving.preprocess import load_image_file


def _images(folder: Path, manifest) -> np.ndarray:
    return np.stack([load_image_file(p, manifest) for p in sorted(folder.glob("*.jpg"))])


def _cuda_reason() -> str | None:
    import torch

    return None if torch.cuda.is_available() else "no CUDA device: torch.cuda.is_available() is False"


def test_onnxruntime_cpu_matches_torch_program(tiny_bundle, tiny_manifest, gallery_images):
    images = _images(gallery_images, tiny_manifest)
    ort_engine = create_engine(tiny_bundle, tiny_manifest, backend="onnxruntime-cpu")
    torch_engine = create_engine(tiny_bundle, tiny_manifest, backend="torch")
    assert torch_engine.device == ("cpu" if _cuda_reason() else "cuda")  # no device asked: CUDA when available
    a, b = ort_engine.embed(images), torch_engine.embed(images)
    assert a.dtype == np.float32 and a.shape == (len(images), tiny_manifest.output.dim)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(a, b, atol=1e-5)
    json.dumps(ort_engine.describe())
    assert ort_engine.describe()["providers"][0] == "CPUExecutionProvider"


def test_auto_logs_why_earlier_backends_were_skipped(tiny_bundle, tiny_manifest, caplog):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here, so it is not skipped for being missing")
    import onnxruntime

    caplog.set_level(logging.INFO, logger="serving.backends")
    engine = create_engine(tiny_bundle, tiny_manifest, backend="auto")
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert skipped[0] == "backend tensorrt skipped: the bundle has no tensorrt model file"
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert engine.name == "onnxruntime-cpu"
        assert skipped[1].startswith("backend onnxruntime-cuda skipped")
        assert "no CUDAExecutionProvider" in skipped[1] and "onnxruntime-gpu" in skipped[1]


def test_intra_op_spinning_is_what_the_server_asks_for(tiny_bundle, tiny_manifest, gallery_images):
    """ONNX Runtime's default (spin) for benchmarks of the engine alone; off for cdd-serve by default, read back
    from the running session; same embeddings either way."""
    from serving.server import _config, _parser

    images = _images(gallery_images, tiny_manifest)[:4]
    spinning = create_engine(tiny_bundle, tiny_manifest, backend="onnxruntime-cpu")
    quiet = create_engine(tiny_bundle, tiny_manifest, backend="onnxruntime-cpu", spin=False)
    assert spinning.describe()["intra_op_spinning"] is True and quiet.describe()["intra_op_spinning"] is False
    np.testing.assert_array_equal(spinning.embed(images), quiet.embed(images))
    args = ["--bundle", str(tiny_bundle), "--index", "unused"]
    assert _config(_parser().parse_args(args)).engine_spin is False
    assert _config(_parser().parse_args([*args, "--engine-spin"])).engine_spin is True
    assert _config(_parser().parse_args([*args, "--engine-threads", "1"])).engine_threads == 1
    with pytest.raises(ValueError, match=r"--engine-threads must be >= 0 \(0 = one per core\), got -1"):
        _config(_parser().parse_args([*args, "--engine-threads", "-1"]))
    one = create_engine(tiny_bundle, tiny_manifest, backend="onnxruntime-cpu", threads=1, spin=False)
    assert one.describe()["intra_op_threads"] == 1 and spinning.describe()["intra_op_threads"] == 0


def test_explicit_backend_errors(tiny_bundle, tiny_manifest):
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        create_engine(tiny_bundle, tiny_manifest, backend="nope")
    with pytest.raises(BackendUnavailable, match="the bundle has no TensorRT plan"):
        create_engine(tiny_bundle, tiny_manifest, backend="tensorrt")
    no_program = dataclasses.replace(tiny_manifest, backends={"onnxruntime": "model.onnx"})
    with pytest.raises(BackendUnavailable, match=r"no 'torch' program \(model.pt2\)"):
        TorchEngine(tiny_bundle, no_program)
    with pytest.raises(BackendUnavailable, match="no 'onnxruntime' model"):
        OnnxRuntimeEngine(tiny_bundle, dataclasses.replace(tiny_manifest, backends={}))
    assert BACKENDS == ("tensorrt", "onnxruntime-cuda", "onnxruntime-cpu", "torch")


def test_bundle_with_float_input_is_refused(tiny_bundle, tiny_manifest):
    floats = dataclasses.replace(tiny_manifest, input=InputSpec(dtype="float32", height=32, width=16))
    with pytest.raises(BundleError, match="uint8 NHWC"):
        OnnxRuntimeEngine(tiny_bundle, floats)


def test_inputs_above_max_batch_run_in_chunks(tiny_bundle, tiny_manifest, gallery_images):
    engine = create_engine(tiny_bundle, tiny_manifest, backend="onnxruntime-cpu")
    images = np.concatenate([_images(gallery_images, tiny_manifest)] * 2)  # 40 > max batch 8
    single = np.concatenate([engine.embed(images[i : i + 1]) for i in range(len(images))])
    sizes: list[int] = []
    run = engine._run
    engine._run = lambda batch: (sizes.append(batch.shape[0]), run(batch))[1]
    chunked = engine.embed(images)
    assert sizes == [8, 8, 8, 8, 8]
    np.testing.assert_allclose(chunked, single, atol=1e-5)
    assert engine.embed(images[:0]).shape == (0, tiny_manifest.output.dim)


def test_batch_below_minimum_is_padded(tiny_bundle, tiny_manifest, gallery_images):
    images = _images(gallery_images, tiny_manifest)[:3]
    padded_manifest = dataclasses.replace(tiny_manifest, batch=BatchRange(min=4, opt=4, max=8))
    engine = OnnxRuntimeEngine(tiny_bundle, padded_manifest)
    reference = OnnxRuntimeEngine(tiny_bundle, tiny_manifest)
    sizes: list[int] = []
    run = engine._run
    engine._run = lambda batch: (sizes.append(batch.shape[0]), run(batch))[1]
    out = engine.embed(images)
    assert sizes == [4] and out.shape == (3, tiny_manifest.output.dim)
    np.testing.assert_allclose(out, reference.embed(images), atol=1e-5)


@pytest.mark.parametrize("backend", ["onnxruntime-cpu", "torch"])
def test_wrong_dtype_or_shape_is_refused(tiny_bundle, tiny_manifest, backend):
    engine = create_engine(tiny_bundle, tiny_manifest, backend=backend)
    good = np.zeros((2, 32, 16, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="dtype uint8.*found float32"):
        engine.embed(good.astype(np.float32))
    with pytest.raises(ValueError, match=r"shape \(N, 32, 16, 3\).*found \(2, 16, 32, 3\)"):
        engine.embed(np.zeros((2, 16, 32, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"found \(32, 16, 3\)"):
        engine.embed(good[0])
    with pytest.raises(ValueError, match="numpy uint8 array"):
        engine.embed(good.tolist())


def test_onnxruntime_cuda_unavailable_reason_is_precise(tiny_bundle, tiny_manifest):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime here has the CUDAExecutionProvider")
    with pytest.raises(BackendUnavailable, match="has no CUDAExecutionProvider.*pip install onnxruntime-gpu"):
        OnnxRuntimeEngine(tiny_bundle, tiny_manifest, device="cuda")


def test_tensorrt_stamp_mismatch_names_the_difference():
    plan = {"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "tensorrt": "10.3.0"}
    assert stamp_mismatch(plan, dict(plan)) is None
    other = {**plan, "compute_capability": "8.9", "gpu": "NVIDIA L4"}
    reason = stamp_mismatch(plan, other)
    assert "compute_capability" in reason and "'9.0'" in reason and "'8.9'" in reason and "gpu" in reason
    assert "missing" in stamp_mismatch({"gpu": "x"}, plan)


def test_importing_serving_does_not_import_heavy_libraries():
    code = (
        "import sys, serving, serving.backends, serving.index, serving.preprocess, serving.bundle\n"
        "heavy = [m for m in ('torch', 'onnxruntime', 'tensorrt', 'faiss') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


@pytest.mark.gpu
def test_torch_cuda_matches_onnxruntime_cpu(tiny_bundle, tiny_manifest, gallery_images):
    reason = _cuda_reason()
    if reason:
        pytest.skip(reason)
    images = _images(gallery_images, tiny_manifest)
    gpu = TorchEngine(tiny_bundle, tiny_manifest, device="cuda")
    cpu = OnnxRuntimeEngine(tiny_bundle, tiny_manifest)
    np.testing.assert_allclose(gpu.embed(images), cpu.embed(images), atol=1e-4)


@pytest.mark.gpu
def test_onnxruntime_cuda_matches_cpu(tiny_bundle, tiny_manifest, gallery_images):
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime has no CUDAExecutionProvider here (pip install onnxruntime-gpu)")
    reason = _cuda_reason()
    if reason:
        pytest.skip(reason)
    images = _images(gallery_images, tiny_manifest)
    gpu = OnnxRuntimeEngine(tiny_bundle, tiny_manifest, device="cuda")
    assert gpu.describe()["providers"][0] == "CUDAExecutionProvider"
    np.testing.assert_allclose(
        gpu.embed(images), OnnxRuntimeEngine(tiny_bundle, tiny_manifest).embed(images), atol=1e-4
    )


def _build_tensorrt_bundle(tiny_bundle: Path, manifest, out: Path):
    """Copy the tiny bundle into ``out`` and add a TensorRT plan built from its ONNX graph (fp32)."""
    import tensorrt as trt
    import torch

    from serving.backends.tensorrt_backend import current_stamp

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse((tiny_bundle / "model.onnx").read_bytes()), parser.get_error(0)
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    h, w, b = manifest.input.height, manifest.input.width, manifest.batch
    profile.set_shape("images", (b.min, h, w, 3), (b.opt, h, w, 3), (b.max, h, w, 3))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    out.mkdir()
    (out / "model.plan").write_bytes(bytes(plan))
    entry = {"file": "model.plan", "stamp": current_stamp(trt, torch, 0)}
    listed = {"sha256": sha256_file(out / "model.plan"), "bytes": len(plan), "role": "tensorrt"}
    return dataclasses.replace(
        manifest, backends={**manifest.backends, "tensorrt": entry}, files={**manifest.files, "model.plan": listed}
    )


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_tensorrt_matches_onnxruntime_cpu(tiny_bundle, tiny_manifest, gallery_images, tmp_path):
    if importlib.util.find_spec("tensorrt") is None:
        pytest.skip("tensorrt is not installed (pip install tensorrt)")
    reason = _cuda_reason()
    if reason:
        pytest.skip(reason)
    from serving.backends.tensorrt_backend import TensorRTEngine

    manifest = _build_tensorrt_bundle(tiny_bundle, tiny_manifest, tmp_path / "trt")
    engine = TensorRTEngine(tmp_path / "trt", manifest)
    images = _images(gallery_images, tiny_manifest)
    reference = OnnxRuntimeEngine(tiny_bundle, tiny_manifest).embed(images)
    np.testing.assert_allclose(engine.embed(images), reference, atol=1e-3)
    stale = dataclasses.replace(
        manifest,
        backends={
            **manifest.backends,
            "tensorrt": {
                "file": "model.plan",
                "stamp": {**manifest.backends["tensorrt"]["stamp"], "tensorrt": "0.0.0"},
            },
        },
    )
    with pytest.raises(BackendUnavailable, match="tensorrt is '0.0.0' in the plan"):
        TensorRTEngine(tmp_path / "trt", stale)
