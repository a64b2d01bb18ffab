"""Count multiply-accumulates in an ONNX graph, per image, to check the manifest's FLOPs.

Convention (the one of ``training.cost``): only Conv, Gemm and MatMul count; a Conv costs
``output elements * (C_in / groups) * kH * kW``, a Gemm/MatMul ``output elements * K``. Shapes come from ONNX
shape inference with the batch axis fixed to 1.
"""

from __future__ import annotations

import math
from pathlib import Path

import onnx
from onnx import shape_inference

from export.errors import ExportError

__all__ = ["FlopsMismatchError", "check_flops", "count_onnx_macs"]


class FlopsMismatchError(ExportError):
    """The ONNX graph's MACs differ from the cost recorded for the manifest, or cannot be counted."""


def _batch_one(model: onnx.ModelProto) -> onnx.ModelProto:
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for value in fixed.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].dim_value:
            dims[0].Clear()
            dims[0].dim_value = 1
    for value in fixed.graph.output:
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_value = 1
    return fixed


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    inferred = shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    graph = inferred.graph
    shapes: dict[str, list[int]] = {t.name: list(t.dims) for t in graph.initializer}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = [d.dim_value for d in dims]
    return shapes


def _shape(shapes: dict[str, list[int]], name: str, node: onnx.NodeProto) -> list[int]:
    if name not in shapes:
        raise FlopsMismatchError(f"ONNX node {node.name or node.op_type}: shape of {name!r} is unknown after shape "
                                 "inference; cannot count its MACs")
    return shapes[name]


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for attribute in node.attribute:
        if attribute.name == name:
            return int(onnx.helper.get_attribute_value(attribute))
    return default


def count_onnx_macs(model: str | Path | onnx.ModelProto) -> int:
    """Conv + Gemm + MatMul multiply-accumulates for one image. Raises FlopsMismatchError when a shape
    needed for the count cannot be inferred."""
    proto = onnx.load(str(model)) if not isinstance(model, onnx.ModelProto) else model
    shapes = _shapes(_batch_one(proto))
    macs = 0
    for node in proto.graph.node:
        if node.op_type == "Conv":
            out = _shape(shapes, node.output[0], node)
            weight = _shape(shapes, node.input[1], node)  # (C_out, C_in / groups, kH, kW)
            macs += math.prod(out) * math.prod(weight[1:])
        elif node.op_type == "Gemm":
            out = _shape(shapes, node.output[0], node)
            a = _shape(shapes, node.input[0], node)
            k = a[0] if _attr(node, "transA", 0) else a[1]
            macs += math.prod(out) * k
        elif node.op_type == "MatMul":
            out = _shape(shapes, node.output[0], node)
            a = _shape(shapes, node.input[0], node)
            macs += math.prod(out) * a[-1]
    return macs


def check_flops(model: str | Path | onnx.ModelProto, expected: int) -> int:
    """Count the graph's MACs and raise FlopsMismatchError unless they equal ``expected`` (per image)."""
    found = count_onnx_macs(model)
    if found != expected:
        raise FlopsMismatchError(f"ONNX graph has {found} multiply-accumulates per image, the manifest cost says "
                                 f"{expected} (training.cost.deployed_cost); the folded network does not match "
                                 "the architecture spec")
    return found
