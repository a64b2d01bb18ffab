"""A Triton Inference Server model repository entry from a model bundle (``cdd-bundle to-triton``,
``cdd-export --triton-repo``).

Writes ``REPO/<name>/config.pbtxt``, ``REPO/<name>/1/model.onnx`` (the bundle's ONNX graph, checked against
the manifest's sha256) and ``REPO/<name>/cdd-manifest.json`` (the bundle manifest: how to decode and resize
images before sending them). The config states what the manifest states: the ONNX Runtime backend, the
input (uint8, NHWC, height x width x 3; normalisation is inside the graph) and output (float32, dim) names,
types and shapes, ``max_batch_size`` = the bundle's largest batch, and dynamic batching preferring its
optimal batch. Triton ignores files it does not know, so the manifest copy travels with the model.

The entry appears whole or not at all: it is written into a temporary sibling folder, fsynced, then
renamed into place (a previous entry of the same name is replaced). Stdlib only, like `serving.bundle`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from serving.bundle import Manifest, load_bundle, sha256_file
from serving.bundle_files import BundleError

__all__ = ["TritonOptions", "triton_config", "write_triton_model", "TRITON_TYPES"]

TRITON_TYPES = {"uint8": "TYPE_UINT8", "float32": "TYPE_FP32", "float16": "TYPE_FP16", "int8": "TYPE_INT8"}
INSTANCE_KINDS = {"auto": None, "cpu": "KIND_CPU", "gpu": "KIND_GPU"}
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class TritonOptions:
    """``name``: model name (default: the bundle's); ``max_queue_delay_us``: how long Triton holds a request
    to form a batch; ``instance_kind``: auto (Triton decides) / cpu / gpu; ``instances`` per device."""

    name: str | None = None
    max_queue_delay_us: int = 2000
    instance_kind: str = "auto"
    instances: int = 1


def _dtype(spec_dtype: str, where: str) -> str:
    if spec_dtype not in TRITON_TYPES:
        raise BundleError(f"{where} dtype {spec_dtype!r} has no Triton type here; known: {sorted(TRITON_TYPES)}")
    return TRITON_TYPES[spec_dtype]


def triton_config(manifest: Manifest, options: TritonOptions = TritonOptions()) -> str:
    """config.pbtxt text (protobuf text format of Triton's ModelConfig) for ``manifest``."""
    name = options.name or manifest.name
    spec_in, spec_out, batch = manifest.input, manifest.output, manifest.batch
    if spec_in.layout != "NHWC":
        raise BundleError(f"input layout {spec_in.layout!r}: Triton export expects the bundle's NHWC contract")
    kind = INSTANCE_KINDS.get(options.instance_kind, "?")
    if kind == "?":
        raise ValueError(f"instance kind {options.instance_kind!r}: expected one of {sorted(INSTANCE_KINDS)}")
    preferred = sorted({max(1, min(batch.opt, batch.max)), batch.max})
    lines = [
        f'name: "{name}"',
        'backend: "onnxruntime"',
        f"max_batch_size: {batch.max}",
        "input [",
        "  {",
        f'    name: "{spec_in.name}"',
        f"    data_type: {_dtype(spec_in.dtype, 'input')}",
        "    format: FORMAT_NHWC",
        f"    dims: [ {spec_in.height}, {spec_in.width}, {spec_in.channels} ]",
        "  }",
        "]",
        "output [",
        "  {",
        f'    name: "{spec_out.name}"',
        f"    data_type: {_dtype(spec_out.dtype, 'output')}",
        f"    dims: [ {spec_out.dim} ]",
        "  }",
        "]",
        "dynamic_batching {",
        f"  preferred_batch_size: [ {', '.join(str(b) for b in preferred)} ]",
        f"  max_queue_delay_microseconds: {int(options.max_queue_delay_us)}",
        "}",
        "version_policy: { latest { num_versions: 1 } }",
    ]
    if kind is not None:
        lines += ["instance_group [", f"  {{ kind: {kind} count: {int(options.instances)} }}", "]"]
    return "\n".join(lines) + "\n"


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for path in [*sorted(root.rglob("*"), reverse=True), root]:
        _fsync_path(path)


def write_triton_model(bundle: str | Path, repository: str | Path, options: TritonOptions = TritonOptions()) -> Path:
    """Write the bundle as model ``options.name`` (default the bundle's name) into the Triton model
    ``repository`` (created if missing); returns ``repository/<name>``. Raises BundleError for a bundle that
    fails its checks or has no ONNX graph, ValueError for a name Triton cannot use."""
    bundle = Path(bundle)
    manifest = load_bundle(bundle)
    name = options.name or manifest.name
    if not _NAME.match(name):
        raise ValueError(f"model name {name!r}: Triton model names here are letters, digits, '_', '.', '-'; "
                         "pass another with --name")
    onnx_file = manifest.backends.get("onnxruntime")
    if not onnx_file:
        raise BundleError(f"{bundle}: the manifest lists no ONNX graph (backends.onnxruntime); re-export the bundle")
    config = triton_config(manifest, options)
    repository = Path(repository)
    repository.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=repository))
    try:
        (staging / "1").mkdir()
        shutil.copyfile(bundle / onnx_file, staging / "1" / "model.onnx")
        expected = manifest.files[onnx_file]["sha256"]
        if sha256_file(staging / "1" / "model.onnx") != expected:
            raise BundleError(f"{bundle / onnx_file}: changed while it was copied; run the command again")
        (staging / "config.pbtxt").write_text(config)
        (staging / "cdd-manifest.json").write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n")
        _fsync_tree(staging)
        target = repository / name
        old = repository / f".{name}.old"
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
        _fsync_path(repository)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
