"""The int8 gate speaks retrieval: embeddings close to fp32 on the gate images, and mAP kept on the run's data.

Two numbers decide it: the smallest cosine between an int8 embedding and the fp32 embedding of the same
gate image (at every gate batch size), and the int8 graph's mAP on the run's query/gallery split against the
fp32 graph's mAP on the same images, computed with training's retrieval metrics (``training.metrics``, the
protocol training evaluates with). A failing gate raises ``Int8GateError`` naming the number that failed,
its tolerance key and the knobs that usually fix it; the caller then writes no bundle.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from export.config import Int8Config, RetrievalTolerance
from export.errors import RunDirError
from export.gate_images import load_images
from export.parity import ParityGateError, compare, take_batch
from training.data.layouts import load_dataset
from training.data.records import Record
from training.metrics import evaluate_retrieval

__all__ = ["Int8GateError", "RetrievalSet", "cross_gate", "int8_gate", "retrieval_map", "retrieval_set"]

Embedder = Callable[[np.ndarray], np.ndarray]


class Int8GateError(ParityGateError):
    """The int8 graph's embeddings or mAP are further from fp32 than ``gates.int8`` allows."""


@dataclass(frozen=True)
class RetrievalSet:
    """uint8 query and gallery images (N, H, W, 3) with identities and cameras; ``protocol`` as in
    ``training.data.records.PROTOCOLS`` ("class": the gallery is the query set, each query removed from its
    own ranking)."""

    query: np.ndarray
    gallery: np.ndarray
    query_ids: np.ndarray
    gallery_ids: np.ndarray
    query_cams: np.ndarray
    gallery_cams: np.ndarray
    protocol: str


def _subsample(query: list[Record], gallery: list[Record], limit: int, seed: int) -> tuple[list, list]:
    """At most ``limit`` images in all (0 = no limit), query and gallery shrunk in proportion, seeded."""
    total = len(query) + len(gallery)
    if limit == 0 or total <= limit:
        return query, gallery
    rng = random.Random(seed)
    n_query = max(1, round(limit * len(query) / total))
    keep_query = sorted(rng.sample(range(len(query)), min(n_query, len(query))))
    keep_gallery = sorted(rng.sample(range(len(gallery)), min(max(1, limit - n_query), len(gallery))))
    return [query[i] for i in keep_query], [gallery[i] for i in keep_gallery]


def retrieval_set(dataset: str, root: str, size_hw: tuple[int, int], limit: int, seed: int) -> RetrievalSet:
    """The run's query/gallery split at ``size_hw`` (at most ``limit`` images, 0 = all, sampled with ``seed``).
    Raises RunDirError when the dataset cannot be listed or has no query image."""
    try:
        splits = load_dataset(dataset, root)
    except (FileNotFoundError, ValueError) as exc:
        raise RunDirError(f"config.json data.dataset={dataset!r}, data.root={root!r}: {exc}; the int8 gate "
                          "measures mAP on the run's query/gallery images") from exc
    query = sorted(splits.query, key=lambda r: r.path)
    gallery = query if splits.protocol == "class" else sorted(splits.gallery, key=lambda r: r.path)
    if not query:
        raise RunDirError(f"dataset {dataset!r} at {root!r} has no query image for the int8 mAP gate")
    if splits.protocol != "class":
        query, gallery = _subsample(query, gallery, limit, seed)
    elif limit:
        query = gallery = _subsample(query, [], limit, seed)[0]
    q_images = load_images(query, size_hw)
    g_images = q_images if gallery is query else load_images(gallery, size_hw)
    return RetrievalSet(
        query=q_images, gallery=g_images,
        query_ids=np.array([r.pid for r in query]), gallery_ids=np.array([r.pid for r in gallery]),
        query_cams=np.array([r.camid for r in query]), gallery_cams=np.array([r.camid for r in gallery]),
        protocol=splits.protocol,
    )


def _embed_all(embed: Embedder, images: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([embed(images[i : i + batch]) for i in range(0, len(images), batch)])


def retrieval_map(embed: Embedder, data: RetrievalSet, batch: int, gallery_embed: Embedder | None = None) -> float:
    """mAP in percent (0..100) of ``embed`` on ``data`` (training.metrics protocol); the gallery is embedded
    with ``gallery_embed`` when given (cross-model retrieval). Raises RunDirError when no query has a true
    match in the gallery."""
    query = _embed_all(embed, data.query, batch)
    try:
        if data.protocol == "class":
            gallery = query if gallery_embed is None else _embed_all(gallery_embed, data.query, batch)
            metrics = evaluate_retrieval(query, gallery, data.query_ids, data.query_ids, query_is_gallery=True)
        else:
            gallery = _embed_all(gallery_embed or embed, data.gallery, batch)
            metrics = evaluate_retrieval(query, gallery, data.query_ids, data.gallery_ids, data.query_cams,
                                         data.gallery_cams)
    except ValueError as exc:
        raise RunDirError(f"int8 mAP gate: {exc}; raise int8.eval_images (0 = all query/gallery images)") from exc
    return 100.0 * metrics.mAP


def _knobs(cfg: Int8Config) -> str:
    more = max(2 * cfg.calibration_images, 512)
    methods = "|".join(m for m in ("minmax", "entropy", "percentile") if m != cfg.calibration_method)
    knobs = [f"more calibration images (int8.calibration_images={more}, now {cfg.calibration_images})",
             f"another calibration method (int8.calibration_method={methods}, now {cfg.calibration_method})"]
    if cfg.exclude != "first_last":
        knobs.append(f"keeping the first and last layers in float (int8.exclude=first_last, now {cfg.exclude})")
    return "try " + ", ".join(knobs[:-1]) + " or " + knobs[-1]


def int8_gate(reference: Embedder, candidate: Embedder, gate_images: np.ndarray, batch_sizes: Sequence[int],
              data: RetrievalSet, batch: int, tolerance: RetrievalTolerance, cfg: Int8Config) -> dict[str, Any]:
    """Compare the int8 ``candidate`` with the fp32 ``reference``: cosine per gate image at each of
    ``batch_sizes``, then mAP on ``data`` (embedded ``batch`` images at a time).

    Returns {"min_cosine", "max_abs_err", "batch_sizes", "images", "map_fp32", "map_int8", "map_drop",
    "eval_queries", "eval_gallery", "tolerance"}. Raises Int8GateError naming the failed number, its
    tolerance key (``gates.int8.*``) and the knobs in ``cfg`` to turn."""
    per_batch = {size: compare(reference(take_batch(gate_images, size)), candidate(take_batch(gate_images, size)))
                 for size in batch_sizes}
    worst = min(per_batch.items(), key=lambda item: item[1].min_cosine)
    if not worst[1].min_cosine >= tolerance.min_cosine:
        raise Int8GateError("int8", f"int8 gate failed: cosine between int8 and fp32 embeddings of the gate images "
                            f"is {worst[1].min_cosine:.5f} (worst image, batch {worst[0]}) < gates.int8.min_cosine "
                            f"{tolerance.min_cosine:.5f}; {_knobs(cfg)}. No bundle was written.")
    map_fp32, map_int8 = retrieval_map(reference, data, batch), retrieval_map(candidate, data, batch)
    drop = map_fp32 - map_int8
    if not drop <= tolerance.max_map_drop:
        raise Int8GateError("int8", f"int8 gate failed: mAP {map_int8:.2f} vs fp32 {map_fp32:.2f} on "
                            f"{len(data.query)} queries, a drop of {drop:.2f} points > gates.int8.max_map_drop "
                            f"{tolerance.max_map_drop:.2f}; {_knobs(cfg)}, or allow a larger drop "
                            "(gates.int8.max_map_drop). No bundle was written.")
    return {
        "min_cosine": min(p.min_cosine for p in per_batch.values()),
        "max_abs_err": max(p.max_abs_err for p in per_batch.values()),
        "batch_sizes": list(batch_sizes),
        "images": int(len(gate_images)),
        "map_fp32": map_fp32,
        "map_int8": map_int8,
        "map_drop": drop,
        "eval_queries": int(len(data.query)),
        "eval_gallery": int(len(data.gallery)),
        "tolerance": {"min_cosine": tolerance.min_cosine, "max_map_drop": tolerance.max_map_drop},
    }


def cross_gate(int8: Embedder, fp32_gallery: Embedder, data: RetrievalSet, batch: int, map_fp32: float,
               tolerance: RetrievalTolerance, bundle: str) -> dict[str, Any]:
    """mAP of int8 queries against a gallery embedded by the fp32 ``bundle``'s graph, within
    ``tolerance.max_map_drop`` points of ``map_fp32``. Returns {"bundle", "map_cross", "map_drop"}; raises
    Int8GateError (the int8 bundle then must not declare that bundle's indexes compatible)."""
    cross = retrieval_map(int8, data, batch, gallery_embed=fp32_gallery)
    if not map_fp32 - cross <= tolerance.max_map_drop:
        raise Int8GateError("int8", f"int8.compatible_with={bundle}: int8 queries against its gallery embeddings "
                            f"reach mAP {cross:.2f} vs fp32 {map_fp32:.2f}, a drop of {map_fp32 - cross:.2f} points > "
                            f"gates.int8.max_map_drop {tolerance.max_map_drop:.2f}; rebuild the index with the int8 "
                            "bundle instead (export without --compatible-with). No bundle was written.")
    return {"bundle": bundle, "map_cross": cross, "map_drop": map_fp32 - cross}
