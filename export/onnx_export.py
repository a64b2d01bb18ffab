"""Export the deploy wrapper to ONNX (legacy TorchScript exporter, pinned opset, dynamic batch axis)."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from export.errors import ExportError

__all__ = ["INPUT_NAME", "ONNX_FILE", "OUTPUT_NAME", "OnnxExportError", "export_onnx", "onnxruntime_embedder"]

INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"
ONNX_FILE = "model.onnx"
"""The bundle's ONNX graph (fp32, or int8 in a precision=int8 bundle)."""


class OnnxExportError(ExportError):
    """The exported ONNX model failed the checker or does not have the expected interface."""


def _legacy_exporter() -> dict[str, bool]:
    """``dynamo=False`` where torch has the switch (>= 2.5; the dynamo exporter is the default from 2.9)."""
    return {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}


def export_onnx(wrapper: nn.Module, path: str | Path, input_size: tuple[int, int], opset: int) -> Path:
    """Write ``wrapper`` (uint8 (N, H, W, 3) -> (N, D)) to ``path`` with input ``images``, output
    ``embeddings``, a symbolic batch axis and ``opset``; validate with ``onnx.checker``.

    Raises OnnxExportError when the checker fails or the saved interface is not the expected one."""
    path = Path(path)
    height, width = input_size
    example = torch.zeros(2, height, width, 3, dtype=torch.uint8)
    wrapper.eval()
    with warnings.catch_warnings():
        # The legacy exporter is chosen on purpose (fast, deterministic graphs); silence its deprecation notice.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        try:
            torch.onnx.export(
                wrapper, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, opset_version=opset,
                do_constant_folding=True, **_legacy_exporter(),
            )
        except Exception as exc:  # the exporter raises many types (OnnxExporterError, RuntimeError, ...)
            raise OnnxExportError(f"torch.onnx.export failed at opset {opset}: {type(exc).__name__}: "
                                  f"{str(exc)[:300]}") from exc
    model = onnx.load(str(path))
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise OnnxExportError(f"{path}: the exported model fails onnx.checker: {exc}") from exc
    _check_interface(model, path, height, width)
    return path


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param if d.dim_param else d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _check_interface(model: onnx.ModelProto, path: Path, height: int, width: int) -> None:
    inputs, outputs = list(model.graph.input), list(model.graph.output)
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in outputs] != [OUTPUT_NAME]:
        raise OnnxExportError(f"{path}: expected one input {INPUT_NAME!r} and one output {OUTPUT_NAME!r}, found "
                              f"{[i.name for i in inputs]} -> {[o.name for o in outputs]}")
    if inputs[0].type.tensor_type.elem_type != onnx.TensorProto.UINT8:
        raise OnnxExportError(f"{path}: input {INPUT_NAME!r} must be uint8")
    in_dims = _dims(inputs[0])
    if not isinstance(in_dims[0], str) or in_dims[1:] != [height, width, 3]:
        raise OnnxExportError(f"{path}: input shape {in_dims}, expected ['batch', {height}, {width}, 3]")
    if not isinstance(_dims(outputs[0])[0], str):
        raise OnnxExportError(f"{path}: output {OUTPUT_NAME!r} has a fixed batch dimension; expected a dynamic one")


def onnxruntime_embedder(path: str | Path, threads: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """A CPU ONNX Runtime session for ``path`` as a function uint8 (N, H, W, 3) -> float32 (N, D).
    ``threads`` 0 lets ONNX Runtime choose."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def embed(images: np.ndarray) -> np.ndarray:
        return session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(images, dtype=np.uint8)})[0]

    return embed
