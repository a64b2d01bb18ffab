"""Build a TensorRT engine (``model.plan``) from the exported ONNX, and run it for the TensorRT parity gate.

``tensorrt`` is imported lazily, inside the functions that need it; importing this module never touches CUDA.
The engine has one optimisation profile over the bundle's batch range, FP16 enabled (INT8 too when asked,
with an entropy calibrator fed from training images). A plan only runs on the GPU model and TensorRT
version it was built with, so the build is stamped with both. Device memory comes from torch's CUDA
allocator, so neither pycuda nor cuda-python is needed. Written against the TensorRT 10 Python API
(name-based I/O: ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import ExportError
from export.onnx_export import INPUT_NAME, OUTPUT_NAME

__all__ = ["TensorRTBuildError", "TensorRTUnavailable", "build_engine", "tensorrt_embedder",
           "tensorrt_unavailable_reason"]


class TensorRTUnavailable(ExportError, RuntimeError):
    """TensorRT cannot run here; ``reason`` says why ("tensorrt not installed ...", "no CUDA GPU ...")."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"TensorRT is required (--tensorrt required) but unavailable: {reason}")
        self.reason = reason


class TensorRTBuildError(ExportError, RuntimeError):
    """TensorRT could not parse the ONNX model or build an engine from it."""


def tensorrt_unavailable_reason() -> str | None:
    """None when TensorRT and a CUDA GPU are usable, else a one-line reason with what to install."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "tensorrt not installed (pip install 'cdd-retrieval[gpu]' or pip install tensorrt)"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU (torch.cuda.is_available() is False)"
    return None


def _trt() -> Any:
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        raise TensorRTUnavailable(reason)
    import tensorrt

    return tensorrt


def _calibrator(trt: Any, images: np.ndarray, batch: int) -> Any:
    """An IInt8EntropyCalibrator2 that feeds ``images`` (uint8 (M, H, W, 3)) ``batch`` at a time."""
    import torch

    class _EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)  # pybind trampolines need the explicit base init
            self._batches = [images[i : i + batch] for i in range(0, len(images) - batch + 1, batch)]
            self._device = torch.empty((batch, *images.shape[1:]), dtype=torch.uint8, device="cuda")
            self._next = 0

        def get_batch_size(self) -> int:
            return 1  # explicit-batch network: the batch is part of the input shape

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self._next >= len(self._batches):
                return None
            self._device.copy_(torch.from_numpy(np.ascontiguousarray(self._batches[self._next])))
            torch.cuda.synchronize()
            self._next += 1
            return [int(self._device.data_ptr()) for _ in names]

        def read_calibration_cache(self) -> None:
            return None  # always calibrate from the images; a stale cache would hide a changed network

        def write_calibration_cache(self, cache: Any) -> None:
            return None

    return _EntropyCalibrator()


def _parse(trt: Any, builder: Any, logger: Any, onnx_path: Path) -> Any:
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTBuildError(f"{onnx_path}: TensorRT cannot parse the ONNX model: {errors}")
    return network, parser


def _enable_int8(trt: Any, builder: Any, config: Any, images: np.ndarray, sizes: tuple[int, int, int]) -> Any:
    """INT8 flag + entropy calibrator + a fixed-shape calibration profile (calibration runs at its opt
    shape); the batch is ``sizes`` = (min, wanted, max) clamped. Returns the calibrator, which the caller
    must keep alive until the build ends (TensorRT holds no Python reference to it)."""
    low, wanted, high = sizes
    size = max(low, min(wanted, high, len(images)))
    if len(images) < size:
        raise TensorRTBuildError(f"INT8 calibration needs at least {size} images, found {len(images)}")
    height, width = images.shape[1:3]
    profile = builder.create_optimization_profile()
    shape = (size, height, width, 3)
    profile.set_shape(INPUT_NAME, shape, shape, shape)
    calibrator = _calibrator(trt, images, size)
    config.set_flag(trt.BuilderFlag.INT8)
    config.int8_calibrator = calibrator
    config.set_calibration_profile(profile)
    return calibrator


def build_engine(onnx_path: str | Path, plan_path: str | Path, input_size: tuple[int, int],
                 batch: tuple[int, int, int], workspace_mib: int, int8_images: np.ndarray | None = None,
                 calibration_batch: int = 16) -> dict[str, Any]:
    """Build ``plan_path`` from ``onnx_path`` for uint8 input (N, H, W, 3), N in ``batch`` = (min, opt, max).

    FP16 is always enabled; INT8 too when ``int8_images`` (uint8 (M, H, W, 3), M >= ``calibration_batch``)
    are given. Returns the stamp {"file", "precision", "gpu", "compute_capability", "tensorrt_version",
    "batch"}. Raises TensorRTUnavailable, or TensorRTBuildError when parsing or building fails."""
    trt = _trt()
    import torch

    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    height, width = input_size
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _parse(trt, builder, logger, onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    profile = builder.create_optimization_profile()
    low, opt, high = batch
    profile.set_shape(INPUT_NAME, (low, height, width, 3), (opt, height, width, 3), (high, height, width, 3))
    config.add_optimization_profile(profile)
    config.set_flag(trt.BuilderFlag.FP16)
    precision, calibrator = "fp16", None
    if int8_images is not None:
        precision = "int8"
        calibrator = _enable_int8(trt, builder, config, int8_images, (low, calibration_batch, high))
    serialized = builder.build_serialized_network(network, config)
    del calibrator
    if serialized is None:
        raise TensorRTBuildError(f"{onnx_path}: TensorRT failed to build a {precision} engine; see the TensorRT "
                                 "log above")
    plan_path.write_bytes(bytes(memoryview(serialized)))
    major, minor = torch.cuda.get_device_capability(0)
    return {
        "file": plan_path.name,
        "precision": precision,
        "gpu": torch.cuda.get_device_name(0),
        "compute_capability": f"{major}.{minor}",
        "tensorrt_version": str(trt.__version__),
        "batch": {"min": low, "opt": opt, "max": high},
    }


class _EngineRunner:
    """Holds runtime, engine and context together (a context must not outlive its engine)."""

    def __init__(self, trt: Any, plan_path: Path) -> None:
        self._path = plan_path
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(plan_path.read_bytes())
        if self._engine is None:
            raise TensorRTBuildError(f"{plan_path}: TensorRT cannot deserialize the engine (built for another GPU "
                                     "or TensorRT version?)")
        names = {self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)}
        if names != {INPUT_NAME, OUTPUT_NAME}:
            raise TensorRTBuildError(f"{plan_path}: engine tensors {sorted(names)}, expected {INPUT_NAME!r} and "
                                     f"{OUTPUT_NAME!r}")
        if self._engine.get_tensor_dtype(OUTPUT_NAME) != trt.float32:
            raise TensorRTBuildError(f"{plan_path}: output {OUTPUT_NAME!r} is not float32")
        self._context = self._engine.create_execution_context()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        import torch

        batch = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)).cuda()
        context = self._context
        context.set_input_shape(INPUT_NAME, tuple(batch.shape))
        out = torch.empty(tuple(context.get_tensor_shape(OUTPUT_NAME)), dtype=torch.float32, device="cuda")
        context.set_tensor_address(INPUT_NAME, int(batch.data_ptr()))
        context.set_tensor_address(OUTPUT_NAME, int(out.data_ptr()))
        stream = torch.cuda.current_stream()
        if not context.execute_async_v3(stream.cuda_stream):
            raise TensorRTBuildError(f"{self._path}: TensorRT execution failed at batch {len(images)}")
        stream.synchronize()
        return out.cpu().numpy()


def tensorrt_embedder(plan_path: str | Path) -> Callable[[np.ndarray], np.ndarray]:
    """Deserialize ``plan_path`` and return uint8 (N, H, W, 3) -> float32 (N, D), run on the current GPU.
    Raises TensorRTUnavailable, or TensorRTBuildError when the plan cannot be deserialized or run."""
    return _EngineRunner(_trt(), Path(plan_path))
