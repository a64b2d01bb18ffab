"""Choose the int8 format by measurement: time the fp32 graph and each quantised candidate on the same batch.

Rounds interleave the candidates (one timed call of each per round) so a machine that gets busier or quieter
during the measurement affects all of them alike; the median per candidate is compared. Sessions are
configured as ``cdd-serve`` runs its engine: ONNX Runtime's default thread count, intra-op spin-waiting as
``ServeConfig.engine_spin`` says (off). Spinning sessions would also distort interleaved rounds: the
idle session's spinning threads take the cores the timed one needs (measured with two spinning 2-thread
sessions on 2 cores: the fp32 demo student fell from 8,500 to 3,700 images/s).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from export.onnx_export import INPUT_NAME, OUTPUT_NAME
from export.parity import take_batch
from serving.backends.onnxruntime_backend import INTRA_OP_SPIN_KEY
from serving.config import ServeConfig

__all__ = ["time_models"]

_MIN_ROUNDS = 3
_WARMUP = 2


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.add_session_config_entry(INTRA_OP_SPIN_KEY, "1" if ServeConfig.engine_spin else "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def time_models(models: Mapping[str, Path], images: np.ndarray, batch: int, seconds: float) -> dict[str, Any]:
    """Median seconds per call of each model at ``batch`` (images cycled from uint8 ``images``), over
    interleaved rounds lasting about ``seconds`` per model (at least 3 rounds).

    Returns {"batch", "rounds", "seconds_per_batch": {name: s}, "images_per_second": {name: img/s}}."""
    feed = {INPUT_NAME: take_batch(images, batch)}
    sessions = {name: _session(path) for name, path in models.items()}
    for session in sessions.values():
        for _ in range(_WARMUP):
            session.run([OUTPUT_NAME], feed)
    samples: dict[str, list[float]] = {name: [] for name in sessions}
    deadline = time.perf_counter() + seconds * len(sessions)
    while len(samples[next(iter(samples))]) < _MIN_ROUNDS or time.perf_counter() < deadline:
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run([OUTPUT_NAME], feed)
            samples[name].append(time.perf_counter() - start)
    medians = {name: float(np.median(values)) for name, values in samples.items()}
    return {
        "batch": batch,
        "rounds": len(samples[next(iter(samples))]),
        "seconds_per_batch": medians,
        "images_per_second": {name: batch / value for name, value in medians.items()},
    }
