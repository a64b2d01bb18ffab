"""The project's performance targets, evaluated on benchmark results as met / not met / not measured.

Targets are reported, never asserted: whether they hold depends on the machine and the trained models.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TARGET_BACKEND", "TARGET_BATCH", "evaluate_targets"]

TARGET_BACKEND = "onnxruntime-cpu"
"""Backend the student / teacher targets are judged on."""
TARGET_BATCH = 32
"""Batch size of the throughput target."""


def _entry(
    key: str, target: str, threshold: float, measured: float | None, detail: str, strict: bool = False
) -> dict[str, Any]:
    met = None if measured is None else (measured > threshold if strict else measured >= threshold)
    return {
        "id": key,
        "target": target,
        "threshold": threshold,
        "measured": measured,
        "met": met,
        "detail": detail,
    }


def _ratio_row(engine: dict[str, Any] | None, batch: int) -> dict[str, Any] | None:
    for row in (engine or {}).get("ratios", []):
        if row["backend"] == TARGET_BACKEND and row["batch"] == batch:
            return row
    return None


def _engine_targets(engine: dict[str, Any] | None) -> list[dict[str, Any]]:
    big, one = _ratio_row(engine, TARGET_BATCH), _ratio_row(engine, 1)
    missing = f"no student and teacher points for {TARGET_BACKEND} at batch"
    return [
        _entry(
            "student_throughput",
            f"student images/s >= 2.5x teacher at batch {TARGET_BATCH} on {TARGET_BACKEND}",
            2.5,
            big["throughput_ratio"] if big else None,
            f"{big['student_images_per_s']:.1f} vs {big['teacher_images_per_s']:.1f} images/s"
            if big
            else f"{missing} {TARGET_BATCH}",
        ),
        _entry(
            "student_latency",
            f"student p50 latency at batch 1 >= 2x lower than teacher on {TARGET_BACKEND}",
            2.0,
            one["latency_ratio"] if one else None,
            f"{one['student_p50_ms']:.2f} vs {one['teacher_p50_ms']:.2f} ms" if one else f"{missing} 1",
        ),
    ]


def _serve_targets(serve: dict[str, Any] | None) -> list[dict[str, Any]]:
    modes = (serve or {}).get("modes", {})
    batched, unbatched = modes.get("batched"), modes.get("unbatched")
    offline = (serve or {}).get("offline")
    clients = (serve or {}).get("config", {}).get("clients", "N")
    batch = (serve or {}).get("config", {}).get("max_batch", "B")
    efficiency = batched["qps"] / offline["images_per_s"] if batched and offline else None
    return [
        _entry(
            "serve_efficiency",
            f"batched serving QPS with {clients} clients >= 70% of offline engine images/s at batch {batch}",
            0.7,
            efficiency,
            f"{batched['qps']:.1f} QPS vs {offline['images_per_s']:.1f} images/s"
            if efficiency is not None
            else "no in-process batched run",
        ),
        _entry(
            "batching_helps",
            "server-side batching gives more QPS than no batching (ratio > 1)",
            1.0,
            batched["qps"] / unbatched["qps"] if batched and unbatched else None,
            f"{batched['qps']:.1f} vs {unbatched['qps']:.1f} QPS"
            if batched and unbatched
            else "needs both in-process modes",
            strict=True,
        ),
    ]


def _index_targets(ingest: dict[str, Any] | None) -> list[dict[str, Any]]:
    return [
        _entry(
            "ingest_busy",
            "index build keeps the engine >= 80% busy (ingestion images/s / offline images/s)",
            0.8,
            ingest["busy_fraction"] if ingest else None,
            f"{ingest['images_per_s']:.1f} vs {ingest['offline']['images_per_s']:.1f} images/s at batch "
            f"{ingest['batch']}"
            if ingest
            else "no ingestion run",
        )
    ]


def evaluate_targets(
    engine: dict[str, Any] | None = None,
    serve: dict[str, Any] | None = None,
    ingest: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """[{"id", "target", "threshold", "measured", "met" (True / False / None = not measured), "detail"}]
    for the results given (None = that benchmark did not run; its targets are left out)."""
    out: list[dict[str, Any]] = []
    if engine is not None:
        out += _engine_targets(engine)
    if serve is not None:
        out += _serve_targets(serve)
    if ingest is not None:
        out += _index_targets(ingest)
    return out
