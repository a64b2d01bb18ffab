"""The project's performance targets, evaluated on benchmark results as met / not met / not measured.

The targets are data (`TARGETS`: what, threshold, which benchmark measures it); the functions below only
read the measured number out of a result. Targets are reported, never asserted: whether they hold depends
on the machine and the trained models.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["TARGET_BACKEND", "TARGET_BATCH", "TARGETS", "Target", "evaluate_targets"]

TARGET_BACKEND = "onnxruntime-cpu"
"""Backend the student / teacher targets are judged on."""
TARGET_BATCH = 32
"""Batch size of the throughput target."""

Measured = tuple[float | None, str]
"""(measured value or None when the result lacks it, detail text)."""


@dataclass(frozen=True)
class Target:
    """One target: met when the measured value is >= ``threshold`` (> when ``strict``; <= when ``at_most``).
    ``benchmark`` names the result it is read from ("engine", "serve" or "ingest"); ``measure`` reads
    (value, detail) from it."""

    id: str
    text: str
    threshold: float
    benchmark: str
    measure: Callable[[dict[str, Any]], Measured]
    strict: bool = False
    at_most: bool = False


def _ratio_row(engine: dict[str, Any], batch: int) -> dict[str, Any] | None:
    for row in engine.get("ratios", []):
        if row["backend"] == TARGET_BACKEND and row["batch"] == batch:
            return row
    return None


def _throughput(engine: dict[str, Any]) -> Measured:
    row = _ratio_row(engine, TARGET_BATCH)
    if row is None:
        return None, f"no student and teacher points for {TARGET_BACKEND} at batch {TARGET_BATCH}"
    return row["throughput_ratio"], f"{row['student_images_per_s']:.1f} vs {row['teacher_images_per_s']:.1f} images/s"


def _latency(engine: dict[str, Any]) -> Measured:
    row = _ratio_row(engine, 1)
    if row is None:
        return None, f"no student and teacher points for {TARGET_BACKEND} at batch 1"
    return row["latency_ratio"], f"{row['student_p50_ms']:.2f} vs {row['teacher_p50_ms']:.2f} ms"


def _peak(serve: dict[str, Any], server: str) -> float | None:
    rows = serve.get("servers", {}).get(server, {}).get("rows")
    return max(row["qps"] for row in rows.values()) if rows else None


def _demo_vs_bare(serve: dict[str, Any]) -> Measured:
    demo, bare = _peak(serve, "demo batched"), _peak(serve, "bare (sync)")
    if demo is None or bare is None:
        return None, "needs the bare server and a demo bundle"
    return demo / bare, f"{demo:.1f} vs {bare:.1f} QPS (peaks)"


def _realistic_vs_offline(serve: dict[str, Any]) -> Measured:
    qps, offline = _peak(serve, "realistic batched"), serve.get("offline", {}).get("realistic")
    if qps is None or offline is None:
        return None, "no realistic bundle measured (make bench-bundle)"
    return qps / offline["images_per_s"], f"{qps:.1f} QPS vs {offline['images_per_s']:.1f} images/s offline"
def _int8_speedup(small: bool) -> Callable[[dict[str, Any]], Measured]:
    """Reads the int8 / fp32 throughput ratio at batch 32 for inputs below (``small``) or at least 256x128."""

    def measure(engine: dict[str, Any]) -> Measured:
        for row in engine.get("int8_ratios", []):
            pixels = row["input_hw"][0] * row["input_hw"][1]
            if row["backend"] == TARGET_BACKEND and row["batch"] == TARGET_BATCH and (pixels < 256 * 128) == small:
                cost = "" if row["map_drop"] is None else (f"; mAP {row['map_int8']:.2f} vs {row['map_fp32']:.2f} "
                                                           f"(cost {row['map_drop']:.2f} points)")
                return row["throughput_ratio"], (f"{row['int8']} {row['int8_images_per_s']:.1f} vs {row['fp32']} "
                                                 f"{row['fp32_images_per_s']:.1f} images/s{cost}")
        size = "below" if small else "at"
        return None, f"no int8 + fp32 pair {size} 256x128 on {TARGET_BACKEND} at batch {TARGET_BATCH}"

    return measure


def _batching_gain(serve: dict[str, Any]) -> Measured:
    batched, unbatched = _peak(serve, "realistic batched"), _peak(serve, "realistic unbatched")
    if batched is None or unbatched is None:
        return None, "no realistic bundle measured (make bench-bundle)"
    return batched / unbatched, f"{batched:.1f} vs {unbatched:.1f} QPS (peaks)"


def _tail(serve: dict[str, Any]) -> Measured:
    tail = serve.get("tail")
    if not tail or tail.get("bundle") != "realistic" or tail.get("p99_over_p50") is None:
        return None, "no open-loop run on the realistic bundle"
    latency = tail["latency"]
    return tail["p99_over_p50"], f"p99 {latency['p99_ms']:.1f} ms vs p50 {latency['p50_ms']:.1f} ms"


def _ingest_busy(ingest: dict[str, Any]) -> Measured:
    splits = ingest.get("splits") or {}
    split = splits.get("demo") or next(iter(splits.values()), None)
    if split is not None:
        best = split["best"]
        return best["ratio"], (f"{best['images_per_s']:.1f} vs {split['offline']['images_per_s']:.1f} images/s "
                               f"({best['engine_threads']} engine + {best['decode_threads']} decode threads)")
    detail = (f"{ingest['images_per_s']:.1f} vs {ingest['offline']['images_per_s']:.1f} images/s at batch "
              f"{ingest['batch']}")
    return ingest["busy_fraction"], detail


TARGETS: tuple[Target, ...] = (
    Target("student_throughput", f"student images/s >= 2.5x teacher at batch {TARGET_BATCH} on {TARGET_BACKEND}",
           2.5, "engine", _throughput),
    Target("student_latency", f"student p50 latency at batch 1 >= 2x lower than teacher on {TARGET_BACKEND}",
           2.0, "engine", _latency),
    Target("int8_throughput_small", f"int8 student images/s >= 1.5x fp32 student at batch {TARGET_BATCH} on "
           f"{TARGET_BACKEND}, inputs below 256x128 (demo size)", 1.5, "engine", _int8_speedup(small=True)),
    Target("int8_throughput_256x128", f"int8 images/s >= 2x fp32 at batch {TARGET_BATCH} on {TARGET_BACKEND}, "
           "inputs of 256x128 and above", 2.0, "engine", _int8_speedup(small=False)),
    Target("demo_vs_bare", "cdd-serve on the demo bundle reaches >= 50% of the bare gRPC server's QPS",
           0.5, "serve", _demo_vs_bare),
    Target("realistic_vs_offline", "cdd-serve on the realistic bundle reaches >= 85% of that engine's offline "
           "images/s at batch {max_batch}", 0.85, "serve", _realistic_vs_offline),
    Target("batching_helps", "server-side batching gives more QPS than no batching on the realistic bundle "
           "(ratio > 1)", 1.0, "serve", _batching_gain, strict=True),
    Target("tail_at_saturation", "p99 <= 2x p50 on the realistic bundle at {saturation_fraction} of its peak "
           "QPS (open loop)", 2.0, "serve", _tail, at_most=True),
    Target("ingest_busy", "index build reaches >= 90% of the engine's solo images/s (ingestion images/s / "
           "offline images/s)", 0.9, "ingest", _ingest_busy),
)
"""Every target, in report order. ``text`` may name fields of the serve result's config ({clients}, ...)."""


def _evaluate(target: Target, result: dict[str, Any]) -> dict[str, Any]:
    measured, detail = target.measure(result)
    if measured is None:
        met = None
    elif target.at_most:
        met = measured <= target.threshold
    else:
        met = measured > target.threshold if target.strict else measured >= target.threshold
    config = {"max_batch": "B", "saturation_fraction": "a fraction", **result.get("config", {})}
    return {"id": target.id, "target": target.text.format(**config), "threshold": target.threshold,
            "measured": measured, "met": met, "detail": detail}


def evaluate_targets(
    engine: dict[str, Any] | None = None,
    serve: dict[str, Any] | None = None,
    ingest: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """[{"id", "target", "threshold", "measured", "met" (True / False / None = not measured), "detail"}]
    for the results given (None = that benchmark did not run; its targets are left out)."""
    results = {"engine": engine, "serve": serve, "ingest": ingest}
    return [_evaluate(t, results[t.benchmark]) for t in TARGETS if results[t.benchmark] is not None]
