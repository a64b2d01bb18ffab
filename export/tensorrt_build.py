"""Build a TensorRT engine (``model.plan``) from the exported ONNX, and run it for the TensorRT parity gate.

``tensorrt`` is imported lazily, inside the functions that need it; importing this module never touches CUDA.
The engine has one optimisation profile over the bundle's batch range and is fp16 (or INT8 when asked,
calibrated on training images), built the way the installed TensorRT 10 or 11 does it
(`export.tensorrt_recipe`: builder flags on 10, a strongly typed network from an fp16 or Q/DQ graph on 11).
A plan only runs on the GPU model and TensorRT version it was built with, so the build is stamped with both
(`plan_stamp`, the keys the serving backend checks). Device memory comes from torch's CUDA allocator, so
neither pycuda nor cuda-python is needed. The runtime calls are the name-based I/O of TensorRT 10 and 11
(``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import ExportError
from export.onnx_export import INPUT_NAME, OUTPUT_NAME
from export.tensorrt_graph import fp16_graph, int8_qdq_graph
from export.tensorrt_recipe import BuildRecipe, UnsupportedTensorRT, build_recipe
from serving.backends.tensorrt_stamp import machine_stamp

__all__ = ["TensorRTBuildError", "TensorRTUnavailable", "build_engine", "plan_stamp", "tensorrt_embedder",
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
        import tensorrt
    except ImportError:
        return "tensorrt not installed (pip install 'cdd-retrieval[gpu]' or pip install tensorrt)"
    except Exception as exc:  # a broken install (missing libnvinfer, CUDA mismatch) fails in many ways
        return f"tensorrt cannot be imported: {type(exc).__name__}: {str(exc)[:200]}"
    try:
        build_recipe(str(getattr(tensorrt, "__version__", "?")), int8=False)
    except UnsupportedTensorRT as exc:
        return str(exc)
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
    """TensorRT 10 only (11 has no calibrators): an IInt8EntropyCalibrator2 that feeds ``images`` (uint8
    (M, H, W, 3)) ``batch`` at a time."""
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


def _parse(trt: Any, builder: Any, logger: Any, onnx_path: Path, strongly_typed: bool) -> Any:
    flags = 0
    if strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)  # 11: accepted, always on
    network = builder.create_network(flags)  # explicit batch is the only mode since TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTBuildError(f"{onnx_path}: TensorRT cannot parse the ONNX model: {errors}")
    return network, parser


def _enable_int8(trt: Any, builder: Any, config: Any, images: np.ndarray, sizes: tuple[int, int, int]) -> Any:
    """TensorRT 10 only: entropy calibrator + a fixed-shape calibration profile (calibration runs at its opt
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
    config.int8_calibrator = calibrator
    config.set_calibration_profile(profile)
    return calibrator


def _graph_for(recipe: BuildRecipe, onnx_path: Path, work: Path, int8_images: np.ndarray | None) -> Path:
    """The ONNX graph ``recipe`` builds from: the bundle's fp32 graph, or its fp16 / int8 Q/DQ copy in ``work``."""
    if recipe.graph == "fp16":
        return fp16_graph(onnx_path, work / "model-fp16.onnx")
    if recipe.graph == "int8-qdq":
        return int8_qdq_graph(onnx_path, work / "model-int8-qdq.onnx", int8_images)
    return onnx_path


def plan_stamp(file: str, precision: str, gpu: str, capability: tuple[int, int], tensorrt_version: str,
               batch: tuple[int, int, int]) -> dict[str, Any]:
    """The ``manifest.backends["tensorrt"]`` entry of a plan: the machine stamp the serving backend checks
    (`serving.backends.tensorrt_stamp.machine_stamp`) plus file, precision and batch range."""
    low, opt, high = batch
    return {"file": file, "precision": precision, **machine_stamp(gpu, capability, tensorrt_version),
            "batch": {"min": low, "opt": opt, "max": high}}


def _serialize(trt: Any, recipe: BuildRecipe, graph: Path, input_size: tuple[int, int],
               batch: tuple[int, int, int], workspace_mib: int, int8_images: np.ndarray | None,
               calibration_batch: int) -> bytes:
    height, width = input_size
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _parse(trt, builder, logger, graph, recipe.strongly_typed)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    profile = builder.create_optimization_profile()
    low, opt, high = batch
    profile.set_shape(INPUT_NAME, (low, height, width, 3), (opt, height, width, 3), (high, height, width, 3))
    config.add_optimization_profile(profile)
    for flag in recipe.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    calibrator = None
    if recipe.calibrator:
        calibrator = _enable_int8(trt, builder, config, int8_images, (low, calibration_batch, high))
    serialized = builder.build_serialized_network(network, config)
    del calibrator
    if serialized is None:
        raise TensorRTBuildError(f"{graph}: TensorRT {trt.__version__} failed to build a {recipe.precision} engine; "
                                 "see the TensorRT log above")
    return bytes(memoryview(serialized))


def build_engine(onnx_path: str | Path, plan_path: str | Path, input_size: tuple[int, int],
                 batch: tuple[int, int, int], workspace_mib: int, int8_images: np.ndarray | None = None,
                 calibration_batch: int = 16) -> dict[str, Any]:
    """Build ``plan_path`` from ``onnx_path`` for uint8 input (N, H, W, 3), N in ``batch`` = (min, opt, max).

    fp16, or INT8 when ``int8_images`` (uint8 (M, H, W, 3), M >= ``calibration_batch``) are given, each the
    way the installed TensorRT builds it (`export.tensorrt_recipe`). Returns `plan_stamp`'s entry. Raises
    TensorRTUnavailable, TensorRTBuildError (unsupported TensorRT, parsing or building failed) or
    TensorRTGraphError / QuantisationError (the fp16 or Q/DQ graph could not be made)."""
    trt = _trt()
    import torch

    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    try:
        recipe = build_recipe(str(trt.__version__), int8_images is not None)
    except UnsupportedTensorRT as exc:
        raise TensorRTBuildError(str(exc)) from exc
    with tempfile.TemporaryDirectory(prefix="cdd-tensorrt-") as work:
        graph = _graph_for(recipe, onnx_path, Path(work), int8_images)
        plan = _serialize(trt, recipe, graph, input_size, batch, workspace_mib, int8_images, calibration_batch)
    plan_path.write_bytes(plan)
    return plan_stamp(plan_path.name, recipe.precision, torch.cuda.get_device_name(0),
                      torch.cuda.get_device_capability(0), str(trt.__version__), batch)


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
