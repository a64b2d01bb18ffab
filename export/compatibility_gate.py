"""The compatibility gate of asymmetric retrieval: may this bundle's queries search a gallery embedded by
another bundle (its teacher)?

Measured the way the deployed pair would run: the exported student graph and the teacher bundle's graph,
both on ONNX Runtime (CPU), embed the run's real query and gallery images, each preprocessed by serving's
own code for its manifest. Three retrievals are scored with the training protocol (`training.metrics`):
teacher/teacher, student/student and student-query/teacher-gallery. The gate passes when the asymmetric
mAP is at most ``max_map_drop`` points below the teacher's own; the declaration written into the
manifest (`serving.compatibility`) carries every number. A failed gate raises and no bundle is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import ExportError, RunDirError
from export.gate_images import load_images
from export.onnx_export import onnxruntime_embedder
from export.parity import ParityGateError
from serving.bundle import BundleError, Manifest, load_bundle
from serving.preprocess import ImageDecodeError, load_image_file
from training.data.layouts import load_dataset
from training.data.records import DatasetSplits, Record
from training.metrics import RetrievalMetrics, evaluate_retrieval

__all__ = ["CompatibilityGateError", "TeacherBundleError", "compatibility_declaration", "gate_advice"]


class CompatibilityGateError(ParityGateError):
    """The asymmetric mAP is more than the tolerance below the teacher/teacher mAP."""


class TeacherBundleError(ExportError):
    """The bundle given to ``--compatible-with`` is missing, fails its checksums or cannot be compared."""


@dataclass(frozen=True)
class _Embedded:
    query: np.ndarray
    gallery: np.ndarray | None  # None: class protocol, the query set is its own gallery


def _batched(embed: Any, images: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([embed(images[i : i + batch]) for i in range(0, len(images), batch)])


def _teacher_pixels(records: list[Record], manifest: Manifest) -> np.ndarray:
    try:
        return np.stack([load_image_file(r.path, manifest) for r in records])
    except ImageDecodeError as exc:
        raise RunDirError(f"{exc}; the compatibility gate reads the images of the dataset in config.json") from exc


def _embed_sets(splits: DatasetSplits, pixels: Any, embed: Any, batch: int) -> _Embedded:
    gallery = None if splits.protocol == "class" else _batched(embed, pixels(splits.gallery), batch)
    return _Embedded(_batched(embed, pixels(splits.query), batch), gallery)


def _score(query: np.ndarray, gallery: np.ndarray | None, splits: DatasetSplits) -> RetrievalMetrics:
    query_ids = np.asarray([r.pid for r in splits.query])
    if gallery is None:  # class protocol: the query set is its own gallery, self-matches removed
        return evaluate_retrieval(query, query, query_ids, query_ids, query_is_gallery=True)
    return evaluate_retrieval(query, gallery, query_ids, [r.pid for r in splits.gallery],
                              query_cams=[r.camid for r in splits.query],
                              gallery_cams=[r.camid for r in splits.gallery])


def _load_teacher(path: Path, dim: int) -> Manifest:
    try:
        manifest = load_bundle(path, verify=True)
    except BundleError as exc:
        raise TeacherBundleError(f"--compatible-with {path}: {exc}") from exc
    if manifest.output.dim != dim:
        raise TeacherBundleError(f"--compatible-with {path}: bundle {manifest.name!r} embeds {manifest.output.dim}-d "
                                 f"vectors, this run {dim}-d; a compatible pair needs the same embedding_dim")
    if "onnxruntime" not in manifest.backends:
        raise TeacherBundleError(f"--compatible-with {path}: bundle {manifest.name!r} has no ONNX model (backends "
                                 f"{sorted(manifest.backends)}); re-export it with cdd-export")
    return manifest


def gate_advice(compat_weight: float, teacher_run: str | Path | None, teacher_bundle: str | Path) -> str:
    """What to do after a failed compatibility gate, checked against the run's own settings: train with the
    compatibility loss when the run had none (``compat_weight`` 0), otherwise check the teacher pairing and the
    loss's weight."""
    if compat_weight <= 0:
        return ("Train the student with the compatibility loss (--set loss.compat_weight=10, the demo student's "
                "setting; this run had loss.compat_weight = 0) or export without --compatible-with")
    pairing = (f"check that {teacher_bundle} was exported from the run this student was distilled from "
               f"({teacher_run})" if teacher_run else f"check that {teacher_bundle} is this student's teacher")
    return (f"This run already trains with the compatibility loss (loss.compat_weight = {compat_weight:g}): "
            f"{pairing}, train the student with a larger loss.compat_weight, or export without --compatible-with")


def compatibility_declaration(student_onnx: Path, input_size: tuple[int, int], dim: int, dataset: str,
                              data_root: str, teacher_bundle: str | Path, max_map_drop: float,
                              batch: int, compat_weight: float = 0.0,
                              teacher_run: str | Path | None = None) -> dict[str, Any]:
    """Measure the student graph at ``student_onnx`` against the teacher bundle and return the declaration
    for ``Manifest.compatible_with`` (layout in `serving.compatibility`). ``batch``: images per ONNX call;
    ``compat_weight`` and ``teacher_run``: the run's own settings, for the advice of a failed gate.
    Raises CompatibilityGateError when asymmetric mAP < teacher mAP - ``max_map_drop`` (percent points),
    TeacherBundleError for an unusable teacher bundle, RunDirError for unreadable images."""
    teacher_path = Path(teacher_bundle)
    teacher = _load_teacher(teacher_path, dim)
    try:
        splits = load_dataset(dataset, data_root)
    except (FileNotFoundError, ValueError) as exc:
        raise RunDirError(f"config.json data.dataset={dataset!r}, data.root={data_root!r}: {exc}") from exc
    student_embed = onnxruntime_embedder(student_onnx)
    teacher_embed = onnxruntime_embedder(teacher_path / teacher.backends["onnxruntime"])
    student = _embed_sets(splits, lambda records: load_images(records, input_size), student_embed, batch)
    teacher_side = _embed_sets(splits, lambda records: _teacher_pixels(records, teacher), teacher_embed,
                               min(batch, teacher.batch.max))
    teacher_gallery = teacher_side.query if teacher_side.gallery is None else teacher_side.gallery
    scores = {"gallery_bundle": _score(teacher_side.query, teacher_side.gallery, splits),
              "this_bundle": _score(student.query, student.gallery, splits),
              "asymmetric": _cross(student.query, teacher_gallery, splits)}
    declaration = {
        "bundle_sha256": teacher.sha256(), "bundle_name": teacher.name, "tolerance_map_points": max_map_drop,
        "mAP": {k: round(100 * m.mAP, 3) for k, m in scores.items()},
        "rank1": {k: round(100 * m.rank1, 3) for k, m in scores.items()},
        "dataset": dataset, "protocol": splits.protocol, "num_queries": len(splits.query),
        "gallery_size": len(splits.gallery) if splits.protocol != "class" else len(splits.query),
        "measured_with": "onnxruntime CPU, serving preprocessing",
    }
    drop = declaration["mAP"]["gallery_bundle"] - declaration["mAP"]["asymmetric"]
    if drop > max_map_drop:
        raise CompatibilityGateError(
            "compatibility",
            f"compatibility gate failed: student queries on the gallery embedded by {teacher.name!r} reach "
            f"{declaration['mAP']['asymmetric']:.2f}% mAP, {drop:.2f} points below its own "
            f"{declaration['mAP']['gallery_bundle']:.2f}% (tolerance {max_map_drop:g}; student/student "
            f"{declaration['mAP']['this_bundle']:.2f}%). {gate_advice(compat_weight, teacher_run, teacher_path)}; "
            "the tolerance is compatibility.max_map_drop"
        )
    return declaration


def _cross(query: np.ndarray, gallery: np.ndarray, splits: DatasetSplits) -> RetrievalMetrics:
    """Student queries against the teacher-embedded gallery (class protocol: the same item set)."""
    if splits.protocol == "class":
        ids = np.asarray([r.pid for r in splits.query])
        return evaluate_retrieval(query, gallery, ids, ids, query_is_gallery=True)
    return _score(query, gallery, splits)
