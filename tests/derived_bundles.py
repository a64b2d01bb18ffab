"""Bundles derived from a test bundle by appending one operation to its ONNX graph, and plain ONNX Runtime
embedding: the independent side of the compatibility tests (export gate and serving)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from serving.bundle import load_bundle, sha256_file, write_manifest
from serving.preprocess import load_image_file


def derived_bundle(source: Path, out: Path, negate: bool = False, project: np.ndarray | None = None,
                   **manifest_fields: Any) -> Path:
    """An ONNX-only copy of bundle ``source`` at ``out`` named ``out.name``, its graph followed by y = -x
    (``negate``) or y = x @ ``project`` (a (dim, dim) matrix); ``manifest_fields`` replace manifest fields."""
    out.mkdir(parents=True)
    model = onnx.load(str(source / "model.onnx"))
    if negate or project is not None:
        graph = model.graph
        original = graph.output[0].name
        for node in graph.node:
            node.output[:] = [f"{name}_pre" if name == original else name for name in node.output]
        if negate:
            graph.node.append(helper.make_node("Neg", [f"{original}_pre"], [original]))
        else:
            graph.initializer.append(numpy_helper.from_array(project.astype(np.float32), "test_projection"))
            graph.node.append(helper.make_node("MatMul", [f"{original}_pre", "test_projection"], [original]))
    onnx.save(model, str(out / "model.onnx"))
    manifest = load_bundle(source)
    files = {"model.onnx": {"sha256": sha256_file(out / "model.onnx"), "bytes": (out / "model.onnx").stat().st_size,
                            "role": "onnxruntime"}}
    data = manifest.to_dict() | {"name": out.name, "files": files, "backends": {"onnxruntime": "model.onnx"}}
    write_manifest(out, type(manifest).from_dict(data | manifest_fields))
    return out


def embed_onnxruntime(bundle: Path, paths: list[Path]) -> np.ndarray:
    """The vectors of the images at ``paths`` by ``bundle``: a plain ONNX Runtime session on serving's
    preprocessing."""
    manifest = load_bundle(bundle)
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    pixels = np.stack([load_image_file(p, manifest) for p in paths])
    return session.run(None, {session.get_inputs()[0].name: pixels})[0]
