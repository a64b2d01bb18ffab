"""The ONNX graphs a strongly typed TensorRT build (TensorRT 11) starts from, made from the bundle's fp32 graph.

A strongly typed network runs every tensor in the type the graph gives it, so the precision of a plan is
chosen here, on the CPU, before TensorRT sees the graph:
- `fp16_graph`: every float tensor, weight and constant in fp16 (ONNX Runtime's float16 converter), with the
  interface kept: the uint8 input now feeds a Cast to fp16, and a Cast back to float32 ends the graph. The
  L2 normalisation at the end divides by the largest magnitude first, so fp16 cannot overflow there.
- `int8_qdq_graph`: explicit quantisation, QuantizeLinear/DequantizeLinear pairs with signed int8 and zero
  points 0 (the only kind TensorRT accepts), weights per output channel, activation ranges calibrated on
  training images; the pixel normalisation in front and the L2 normalisation at the end stay float32.
Both are checked (``onnx.checker``, unchanged interface) and run under ONNX Runtime on the CPU too.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

from export.errors import ExportError
from export.int8_quantize import prepare, quantise
from export.onnx_export import INPUT_NAME, OUTPUT_NAME

__all__ = ["TensorRTGraphError", "fp16_graph", "int8_qdq_graph"]

_WEIGHT_OPS = ("Conv", "Gemm", "MatMul")


class TensorRTGraphError(ExportError):
    """The fp16 or explicitly quantised copy of the ONNX graph could not be made or is malformed."""


def _check(model: onnx.ModelProto, path: Path, what: str) -> None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise TensorRTGraphError(f"{path}: the {what} graph fails onnx.checker: {exc}") from exc
    inputs = [(i.name, i.type.tensor_type.elem_type) for i in model.graph.input]
    outputs = [(o.name, o.type.tensor_type.elem_type) for o in model.graph.output]
    expected = ([(INPUT_NAME, onnx.TensorProto.UINT8)], [(OUTPUT_NAME, onnx.TensorProto.FLOAT)])
    if (inputs, outputs) != expected:
        raise TensorRTGraphError(f"{path}: the {what} graph has interface {inputs} -> {outputs}, expected uint8 "
                                 f"{INPUT_NAME!r} -> float32 {OUTPUT_NAME!r}")


def fp16_graph(fp32_path: str | Path, out_path: str | Path) -> Path:
    """Write the fp16 copy of ``fp32_path`` (uint8 input and float32 output kept) to ``out_path``.
    Raises TensorRTGraphError when the conversion fails or the result is malformed."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    try:
        model = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    except Exception as exc:  # the converter raises many types (shape inference, onnx, assertions)
        raise TensorRTGraphError(f"{fp32_path}: fp16 conversion failed: {type(exc).__name__}: "
                                 f"{str(exc)[:300]}") from exc
    _check(model, out_path, "fp16")
    onnx.save(model, str(out_path))
    return out_path


def _weight_layers(model_path: Path) -> list[str]:
    return [n.name for n in onnx.load(str(model_path), load_external_data=False).graph.node if n.op_type in _WEIGHT_OPS]


def int8_qdq_graph(fp32_path: str | Path, out_path: str | Path, images: np.ndarray) -> Path:
    """Write the explicitly quantised copy of ``fp32_path`` to ``out_path``: signed symmetric int8 Q/DQ,
    weights per channel, activation ranges from entropy calibration on ``images`` (uint8 (M, H, W, 3)); the
    embedding layer stays float. Raises TensorRTGraphError (or QuantisationError) when it fails."""
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    with tempfile.TemporaryDirectory(prefix="cdd-tensorrt-int8-") as work:
        prepared = prepare(fp32_path, Path(work) / "prepared.onnx")
        embedding = tuple(_weight_layers(prepared)[-1:])
        quantise(prepared, out_path, "qdq", images, "entropy", per_channel=True, reduce_range=False,
                 exclude=embedding, ranges_cache=Path(work) / "ranges", activations="int8-symmetric")
    model = onnx.load(str(out_path))
    _check(model, out_path, "int8 Q/DQ")
    _check_symmetric(model, out_path)
    return out_path


def _check_symmetric(model: onnx.ModelProto, path: Path) -> None:
    """Every QuantizeLinear/DequantizeLinear zero point is int8 and 0 (TensorRT rejects anything else)."""
    constants = {t.name: t for t in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if not nodes:
        raise TensorRTGraphError(f"{path}: the int8 graph has no QuantizeLinear/DequantizeLinear nodes")
    for node in nodes:
        zero = constants.get(node.input[2]) if len(node.input) > 2 else None
        if zero is None:  # without a zero point, QuantizeLinear produces uint8
            raise TensorRTGraphError(f"{path}: {node.op_type} {node.name!r} has no int8 zero point initializer")
        if zero.data_type != onnx.TensorProto.INT8 or np.any(onnx.numpy_helper.to_array(zero)):
            raise TensorRTGraphError(f"{path}: {node.op_type} {node.name!r} has zero point type {zero.data_type} "
                                     "and values other than 0; TensorRT needs signed symmetric int8")
