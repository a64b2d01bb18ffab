"""A timing loop for one callable (`time_calls`) and latency percentiles (`percentiles_ms`)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["percentiles_ms", "time_calls"]


def time_calls(
    fn: Callable[[], object],
    *,
    warmup: int,
    iters: int | None = None,
    seconds: float | None = None,
    min_iters: int = 3,
) -> tuple[list[float], float]:
    """Call ``fn`` ``warmup`` times, then ``iters`` times, or (``iters`` None) until ``seconds`` have passed
    and at least ``min_iters`` calls ran. Returns (seconds of each timed call, seconds of the first
    warm-up call or 0.0 without warm-up). Raises ValueError when neither or both of iters/seconds are set."""
    if (iters is None) == (seconds is None):
        raise ValueError("give exactly one of iters (number of timed calls) or seconds (time per point)")
    if iters is not None and iters < 1:
        raise ValueError(f"iters must be >= 1, found {iters}")
    if seconds is not None and seconds <= 0:
        raise ValueError(f"seconds must be > 0, found {seconds}")
    first = 0.0
    for i in range(max(0, warmup)):
        tick = time.perf_counter()
        fn()
        if i == 0:
            first = time.perf_counter() - tick
    samples: list[float] = []
    start = time.perf_counter()
    while True:
        tick = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - tick)
        if iters is not None:
            if len(samples) >= iters:
                break
        elif len(samples) >= min_iters and time.perf_counter() - start >= seconds:
            break
    return samples, first


def percentiles_ms(samples_s: Sequence[float]) -> dict[str, float]:
    """Latency summary in milliseconds of per-call ``samples_s`` (seconds): calls, mean, min, p50, p90,
    p99, max (linear interpolation, so p50 <= p90 <= p99). Raises ValueError for no or non-finite samples."""
    values = np.asarray(samples_s, dtype=np.float64) * 1000.0
    if values.size == 0:
        raise ValueError("no latency samples: the timed loop ran zero calls")
    if not all(math.isfinite(v) for v in values):
        raise ValueError("latency samples contain NaN or infinity")
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {
        "calls": int(values.size),
        "mean_ms": float(values.mean()),
        "min_ms": float(values.min()),
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "max_ms": float(values.max()),
    }
