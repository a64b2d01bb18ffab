"""What a Search costs the server besides gRPC: CPU per request of each step the batch worker runs.

``cdd-bench search-cost --bundle DIR --batches 1,6,16`` builds the service as cdd-serve does
(`serving.server.build_service`: the verified bundle, ONNX Runtime with one intra-op thread, FAISS with one
OpenMP thread, as each of cdd-serve's one-per-core workers runs them) over a random gallery of
``gallery_size`` unit vectors, and times the steps the batch worker runs for a batch of B Search queries,
exactly as `RetrievalService.batch_steps` hands them to it:

- ``decode``: each query's JPEG to model input (the decoding rule, libjpeg-turbo where it applies);
- ``embed``: one engine call for the batch;
- ``search``: one gallery search for the batch, hits ranked and turned into replies;
- ``reply``: each query's response bytes.

Time is this thread's CPU time (``time.thread_time``), so other processes on the machine add little.
Each step runs ``calls`` times per round; rounds interleave the steps and batch sizes; the result per step
and batch size is the median over ``rounds`` of CPU per request (step CPU / B), with the smallest and
largest round. What the gRPC front costs (call handling, the event loop, the hand-off to the worker) is
what `cdd-bench serve` measures beside the bare servers; this benchmark gives the part no front can remove.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cdd_common.search_cost_table import SEARCH_COST_STEPS
from serving.benchmarks.serve import query_jpegs, random_gallery
from serving.bundle import load_bundle
from serving.config import ServeConfig
from serving.server import build_service

__all__ = ["SearchCostConfig", "bench_search_cost"]


@dataclass(frozen=True)
class SearchCostConfig:
    """Batch sizes to cost, rounds (the median is taken over them), timed calls of each step per round,
    gallery items, results per query, ONNX Runtime intra-op threads, seed of the gallery and the synthetic
    query pictures."""

    batches: tuple[int, ...] = (1, 6, 16)
    rounds: int = 7
    calls: int = 200
    gallery_size: int = 1280
    k: int = 10
    engine_threads: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.batches or min(self.batches) < 1:
            raise ValueError(f"--batches must be positive batch sizes, found {list(self.batches)}")
        counts = {"--rounds": self.rounds, "--calls": self.calls, "--gallery-size": self.gallery_size,
                  "--k": self.k, "--engine-threads": self.engine_threads}
        if min(counts.values()) < 1:
            raise ValueError(f"{', '.join(counts)} must be >= 1, found {', '.join(map(str, counts.values()))}")


def _cpu_us(work: Callable[[], object], calls: int) -> float:
    """Mean CPU microseconds of this thread per ``work()`` call, after one untimed call."""
    work()
    start = time.thread_time()
    for _ in range(calls):
        work()
    return (time.thread_time() - start) / calls * 1e6


def bench_search_cost(bundle: Path, cfg: SearchCostConfig, workdir: Path,
                      sources: Sequence[Path] = ()) -> dict[str, Any]:
    """Per batch size and step: CPU microseconds per request (median, min, max over the rounds, and every
    round). ``workdir`` receives the random gallery; ``sources`` are query images (default: synthetic)."""
    manifest = load_bundle(bundle, verify=True)
    if max(cfg.batches) > manifest.batch.max:
        raise ValueError(f"--batches {max(cfg.batches)} exceeds bundle {bundle}'s batch.max "
                         f"{manifest.batch.max}; use batch sizes up to it")
    index = random_gallery(manifest, cfg.gallery_size, cfg.seed, workdir / "gallery")
    service = build_service(ServeConfig(bundle=bundle, index=index, backend="onnxruntime-cpu",
                                        engine_threads=cfg.engine_threads,
                                        index_threads=1, max_batch=max(cfg.batches)))
    try:
        steps = service.batch_steps()
        queries = [service.search_query(image, cfg.k) for image in query_jpegs(manifest, max(cfg.batches), cfg.seed,
                                                                                  sources)]
        samples: dict[int, dict[str, list[float]]] = {b: {step: [] for step in SEARCH_COST_STEPS} for b in cfg.batches}
        for _ in range(cfg.rounds):
            for size in cfg.batches:
                batch = queries[:size]
                pixels = np.stack([steps.decode(query) for query in batch])
                rows = steps.embed(pixels)
                found = steps.search(rows, batch)
                work: dict[str, Callable[[], object]] = {
                    "decode": lambda batch=batch: [steps.decode(query) for query in batch],
                    "embed": lambda pixels=pixels: steps.embed(pixels),
                    "search": lambda rows=rows, batch=batch: steps.search(rows, batch),
                    "reply": lambda found=found: [item.reply() for item in found],
                }
                for step in SEARCH_COST_STEPS:
                    samples[size][step].append(_cpu_us(work[step], cfg.calls) / size)
        engine = service.engine.describe()
    finally:
        service.close()
    batches = {}
    for size, by_step in samples.items():
        cells = {step: {"median_us": statistics.median(values), "min_us": min(values), "max_us": max(values),
                        "rounds_us": values} for step, values in by_step.items()}
        batches[str(size)] = {"steps": cells, "total_median_us": sum(c["median_us"] for c in cells.values())}
    return {"bundle": manifest.name, "engine": engine, "config": asdict(cfg), "batches": batches}
