"""int8 vs fp32 in the engine benchmark: each int8 bundle next to the fp32 bundle of the same checkpoint.

A pair is an int8 bundle (manifest ``precision`` "int8") and an fp32 bundle whose manifests record the same
``provenance.checkpoint_sha256``: the same trained network, so the ratio isolates the effect of integer
arithmetic. The mAP cost comes from the int8 manifest's gate (``parity["int8"]``: fp32 and int8 mAP of the
same graphs on the run's query/gallery, measured at export).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["int8_fp32_ratios", "int8_markdown_lines"]


def _checkpoint(bundle: Any) -> str | None:
    return bundle.manifest.provenance.get("checkpoint_sha256")


def _pairs(bundles: Sequence[Any]) -> list[tuple[Any, Any]]:
    fp32 = {_checkpoint(b): b for b in bundles if b.manifest.precision == "fp32" and _checkpoint(b)}
    return [(b, fp32[_checkpoint(b)]) for b in bundles
            if b.manifest.precision == "int8" and _checkpoint(b) in fp32]


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


def int8_fp32_ratios(bundles: Sequence[Any], results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per int8/fp32 pair (``bundles``: objects with ``label`` and ``manifest``), backend and common batch
    size: images/s and p50 of both, throughput_ratio (int8 / fp32), latency_ratio (fp32 p50 / int8 p50), the
    export gate's map_fp32 / map_int8 / map_drop (points) and the input size. Empty without a pair."""
    points = {(r["bundle"], r["backend"]): {p["batch"]: p for p in r["points"]} for r in results}
    rows = []
    for int8, fp32 in _pairs(bundles):
        gate = int8.manifest.parity.get("int8", {})
        for backend in dict.fromkeys(r["backend"] for r in results):
            mine, theirs = points.get((int8.label, backend), {}), points.get((fp32.label, backend), {})
            for batch in sorted(set(mine) & set(theirs)):
                q, f = mine[batch], theirs[batch]
                rows.append({
                    "int8": int8.label, "fp32": fp32.label, "backend": backend, "batch": batch,
                    "input_hw": [int8.manifest.input.height, int8.manifest.input.width],
                    "int8_images_per_s": q["images_per_s"], "fp32_images_per_s": f["images_per_s"],
                    "throughput_ratio": _ratio(q["images_per_s"], f["images_per_s"]),
                    "int8_p50_ms": q["p50_ms"], "fp32_p50_ms": f["p50_ms"],
                    "latency_ratio": _ratio(f["p50_ms"], q["p50_ms"]),
                    "map_fp32": gate.get("map_fp32"), "map_int8": gate.get("map_int8"),
                    "map_drop": gate.get("map_drop"),
                })
    return rows


def _cell(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def int8_markdown_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """A markdown section comparing each int8 bundle with its fp32 bundle (nothing without a pair)."""
    if not rows:
        return []
    header = ["int8 bundle", "fp32 bundle", "backend", "batch", "int8 img/s", "fp32 img/s", "speed-up",
              "latency ratio", "mAP fp32", "mAP int8", "mAP cost (points)"]
    lines = ["int8 vs fp32 (same checkpoint): speed-up = int8 images/s / fp32 images/s; latency ratio = fp32 p50 "
             "/ int8 p50; mAP from the int8 export gate (same query/gallery, both graphs).", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["int8"], r["fp32"], r["backend"], str(r["batch"]), _cell(r["int8_images_per_s"], 1),
                 _cell(r["fp32_images_per_s"], 1), _cell(r["throughput_ratio"], 2), _cell(r["latency_ratio"], 2),
                 _cell(r["map_fp32"], 2), _cell(r["map_int8"], 2), _cell(r["map_drop"], 2)]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]
