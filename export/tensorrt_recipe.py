"""How each supported TensorRT major version builds a plan of each precision (no tensorrt import here).

TensorRT 10 ("weakly typed"): the fp32 ONNX graph, with ``BuilderFlag.FP16`` (and ``BuilderFlag.INT8`` plus an
entropy calibrator for INT8) letting the builder pick lower-precision kernels.
TensorRT 11 removed those flags, the INT8 calibrators and the calibration profile: every network is strongly
typed, so the precision has to be in the graph. fp16 is built from an fp16 copy of the ONNX graph (uint8
input and float32 output kept, see `export.tensorrt_graph.fp16_graph`); INT8 from an explicitly quantised
copy (signed, symmetric QuantizeLinear/DequantizeLinear pairs, `export.tensorrt_graph.int8_qdq_graph`).
The ``STRONGLY_TYPED`` network flag is set where the binding still has it (11.x accepts and ignores it).
Other major versions are refused with the versions that work.
"""

from __future__ import annotations

from dataclasses import dataclass

from serving.backends.tensorrt_stamp import SUPPORTED_TENSORRT_MAJORS

__all__ = ["SUPPORTED_MAJORS", "BuildRecipe", "UnsupportedTensorRT", "build_recipe", "tensorrt_major"]

SUPPORTED_MAJORS = SUPPORTED_TENSORRT_MAJORS


class UnsupportedTensorRT(ValueError):
    """The installed TensorRT is not a version this exporter knows how to build with."""


@dataclass(frozen=True)
class BuildRecipe:
    """One build: ``graph`` is the ONNX graph handed to the parser ("fp32": the bundle's ``model.onnx``;
    "fp16": its fp16 copy; "int8-qdq": its explicitly quantised copy), ``strongly_typed`` whether the
    network is created strongly typed, ``builder_flags`` the ``trt.BuilderFlag`` names set on the config,
    ``calibrator`` whether an INT8 entropy calibrator (and calibration profile) is attached."""

    major: int
    precision: str
    graph: str
    strongly_typed: bool
    builder_flags: tuple[str, ...]
    calibrator: bool


def tensorrt_major(version: str) -> int:
    """The major version of a ``tensorrt.__version__`` string ("11.4.0.106" -> 11).
    Raises UnsupportedTensorRT when it does not start with a number."""
    head = str(version).split(".", 1)[0]
    if not head.isdigit():
        raise UnsupportedTensorRT(f"cannot read the TensorRT version {version!r}")
    return int(head)


def build_recipe(version: str, int8: bool) -> BuildRecipe:
    """The recipe for TensorRT ``version`` and precision fp16 (``int8`` False) or INT8.
    Raises UnsupportedTensorRT for a major version outside SUPPORTED_MAJORS."""
    major = tensorrt_major(version)
    precision = "int8" if int8 else "fp16"
    if major == 10:
        flags = ("FP16", "INT8") if int8 else ("FP16",)
        return BuildRecipe(major, precision, "fp32", strongly_typed=False, builder_flags=flags, calibrator=int8)
    if major == 11:
        graph = "int8-qdq" if int8 else "fp16"
        return BuildRecipe(major, precision, graph, strongly_typed=True, builder_flags=(), calibrator=False)
    raise UnsupportedTensorRT(
        f"TensorRT {version} is not supported: plans are built with TensorRT 10.x (builder precision flags) or "
        "11.x (strongly typed networks); pip install 'tensorrt>=10,<12'"
    )
