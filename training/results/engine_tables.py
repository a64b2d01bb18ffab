"""Markdown table of an engine benchmark results file (``cdd-bench engine`` writes ``OUT/engine.json``): per
batch size, the student against the teacher and the int8 student against the fp32 one, on each backend.
"""

from __future__ import annotations

from typing import Any

from training.results.tables import ResultsError, markdown_table

__all__ = ["engine_table"]


def _rows(engine: dict[str, Any]) -> list[list[str]]:
    rows = []
    for r in engine.get("ratios") or []:
        rows.append([f"{r['student']} vs {r['teacher']}", r["backend"], str(r["batch"]),
                     f"{r['teacher_images_per_s']:,.0f}", f"{r['student_images_per_s']:,.0f}",
                     f"{r['throughput_ratio']:.2f}x", f"{r['latency_ratio']:.2f}x", ""])
    for r in engine.get("int8_ratios") or []:
        rows.append([f"{r['int8']} vs {r['fp32']}", r["backend"], str(r["batch"]), f"{r['fp32_images_per_s']:,.0f}",
                     f"{r['int8_images_per_s']:,.0f}", f"{r['throughput_ratio']:.2f}x", f"{r['latency_ratio']:.2f}x",
                     f"{r['map_fp32']:.2f} -> {r['map_int8']:.2f}" if r.get("map_fp32") is not None else ""])
    return rows


def engine_table(result: dict[str, Any], source: str = "engine") -> str:
    """Per pair and batch size: images/s of the reference bundle and of the smaller one, their ratio, the ratio
    of median latencies per call, and (int8) the gate's mAP of both; the threads the engines used."""
    engine = result.get("engine")
    rows = _rows(engine) if isinstance(engine, dict) else []
    if not rows:
        raise ResultsError(f"{source}: no student/teacher or int8/fp32 pairs in \"engine\"; it is written by "
                           "`cdd-bench engine` with a teacher, a student and an int8 bundle")
    header = ["pair (smaller vs reference)", "backend", "batch", "reference images/s", "smaller images/s",
              "throughput ratio", "p50 latency ratio", "mAP % reference -> int8"]
    threads = engine.get("threads", {}).get("onnxruntime_intra_op")
    note = f"\n\nONNX Runtime intra-op threads: {threads}." if threads else ""
    return "\n".join(markdown_table(header, rows, "llrrrrrr")) + note
