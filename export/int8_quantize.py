"""ONNX Runtime static int8 quantisation of the exported fp32 graph.

The fp32 graph (uint8 NHWC in, unit float32 embeddings out) is prepared with ONNX Runtime's
``quant_pre_process`` (shape inference + graph optimisation), its activation ranges are calibrated on real
training images, and its weight layers are quantised per output channel (int8 weights, uint8 activations).
The graph's interface is unchanged: the input stays uint8 pixels and the output stays float32, because
quantisation covers only the convolutions, the embedding layer and the ops between them (``OP_TYPES``);
the normalisation in front (``preprocessing_nodes``: every node before the first weight layer) and the L2
normalisation at the end stay in float, so the first QuantizeLinear sits on the first convolution's input.

Two formats: "qdq" (QuantizeLinear/DequantizeLinear pairs around float ops, fused by ONNX Runtime at load)
and "qoperator" (QLinearConv, QLinearAdd, ... operators). Which is faster depends on the CPU and the graph,
so ``export.int8_format`` times both.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from export.errors import ExportError
from export.onnx_export import INPUT_NAME

__all__ = ["FORMATS", "OP_TYPES", "QuantisationError", "QuantisedModel", "excluded_nodes", "prepare",
           "preprocessing_nodes", "quantise"]

OP_TYPES = ("Conv", "Gemm", "MatMul", "Add", "Relu", "MaxPool", "GlobalAveragePool")
"""Op types quantised: the weight layers plus the element-wise/pooling ops between them, so activations
stay int8 through residual blocks instead of bouncing back to float after every convolution."""
FORMATS = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}
_METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}
_WEIGHT_OPS = ("Conv", "Gemm", "MatMul")
_CALIBRATION_BATCH = 32


class QuantisationError(ExportError):
    """ONNX Runtime could not quantise the graph (the message names the format and the cause)."""


@dataclass(frozen=True)
class QuantisedModel:
    """One quantised graph: its ``path``, ``format`` ("qdq" | "qoperator") and the node names kept in float."""

    path: Path
    format: str
    excluded: tuple[str, ...]


class _ImageReader(CalibrationDataReader):
    """Feeds uint8 (M, H, W, 3) calibration images to the graph input, ``batch`` at a time."""

    def __init__(self, images: np.ndarray, batch: int) -> None:
        self._batches = [np.ascontiguousarray(images[i : i + batch]) for i in range(0, len(images), batch)]
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self._batches):
            return None
        self._next += 1
        return {INPUT_NAME: self._batches[self._next - 1]}

    def rewind(self) -> None:
        self._next = 0


def prepare(fp32_path: Path, out_path: Path) -> Path:
    """ONNX Runtime's recommended pre-processing (symbolic shape inference, graph optimisation) of
    ``fp32_path`` into ``out_path``. Raises QuantisationError when it fails."""
    try:
        quant_pre_process(str(fp32_path), str(out_path))
    except Exception as exc:  # the pre-processor raises many types (shape inference, optimizer, onnx)
        raise QuantisationError(f"{fp32_path}: quantisation pre-processing failed: {type(exc).__name__}: "
                                f"{str(exc)[:300]}") from exc
    return out_path


def excluded_nodes(model_path: Path, exclude: str) -> tuple[str, ...]:
    """Names of the nodes ``exclude`` ("none" | "first" | "last" | "first_last") keeps in float: the first
    convolution and/or the last weight layer (the embedding layer), in graph order."""
    weight_nodes = [n.name for n in onnx.load(str(model_path), load_external_data=False).graph.node
                    if n.op_type in _WEIGHT_OPS]
    if not weight_nodes or exclude == "none":
        return ()
    chosen = {"first": weight_nodes[:1], "last": weight_nodes[-1:],
              "first_last": [weight_nodes[0], weight_nodes[-1]]}[exclude]
    return tuple(dict.fromkeys(chosen))


def preprocessing_nodes(model_path: Path) -> tuple[str, ...]:
    """Names of the nodes before the first weight layer in graph order (the in-graph cast, layout change and
    normalisation of the pixels): quantised, they would add a quantise/dequantise round trip in front of
    the first convolution and a quantised Add whose range is the normalised image's."""
    names: list[str] = []
    for node in onnx.load(str(model_path), load_external_data=False).graph.node:
        if node.op_type in _WEIGHT_OPS:
            return tuple(names)
        names.append(node.name)
    return ()


def quantise(prepared: Path, out_path: Path, fmt: str, images: np.ndarray, method: str, per_channel: bool,
             reduce_range: bool, exclude: tuple[str, ...], ranges_cache: Path,
             activations: str = "uint8") -> QuantisedModel:
    """Quantise ``prepared`` (from ``prepare``) into ``out_path`` in format ``fmt``, calibrating activation
    ranges with ``method`` on ``images`` (uint8 (M, H, W, 3)). The ranges are saved to ``ranges_cache``, or
    read from it when it exists (so a second format reuses the first one's calibration). ``activations``:
    "uint8" (asymmetric, for ONNX Runtime on CPUs) or "int8-symmetric" (zero points 0, what TensorRT's
    explicit quantisation accepts). Raises QuantisationError when it fails."""
    signed = {"uint8": False, "int8-symmetric": True}[activations]
    logging.getLogger("export").info("quantising (%s, %s calibration on %d images)", fmt, method, len(images))
    try:
        quantize_static(
            str(prepared), str(out_path), _ImageReader(images, _CALIBRATION_BATCH), quant_format=FORMATS[fmt],
            op_types_to_quantize=list(OP_TYPES), per_channel=per_channel, reduce_range=reduce_range,
            activation_type=QuantType.QInt8 if signed else QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=[*preprocessing_nodes(prepared), *exclude],
            calibrate_method=_METHODS[method], calibration_cache_path=str(ranges_cache),
            extra_options={"ActivationSymmetric": signed, "WeightSymmetric": True,
                           **({"QuantizeBias": False} if signed else {})},  # TensorRT has no int32 Q/DQ
        )
    except Exception as exc:  # the quantiser raises many types (calibration, graph rewriting, onnx)
        raise QuantisationError(f"ONNX Runtime {fmt} quantisation with {method} calibration failed: "
                                f"{type(exc).__name__}: {str(exc)[:300]}; try int8.format=qdq or qoperator, "
                                "or another int8.calibration_method") from exc
    return QuantisedModel(path=out_path, format=fmt, excluded=exclude)
