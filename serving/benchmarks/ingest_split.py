"""How to split a thread budget between image decoding and the engine during `cdd-index build`.

For each split (engine intra-op threads, decode threads) of ``budget`` threads, plus the
oversubscribed one (engine = budget, decode 1, the default of a plain ``cdd-index build``), a real flat
`build_index` of the images is timed and compared with the engine alone at the full budget. The split with
the highest ratio is the one to use; the table is the measurement behind that choice.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from serving.benchmarks.engine import measure_point, open_engine
from serving.bundle import Manifest
from serving.index.build import build_index, items_from_folder

__all__ = ["bench_ingest_split", "split_markdown", "thread_splits"]

_LOG = logging.getLogger("serving.benchmarks")


def thread_splits(budget: int) -> list[tuple[int, int]]:
    """(engine threads, decode threads): every split of ``budget`` (both >= 1), then (budget, 1)."""
    splits = [(engine, budget - engine) for engine in range(budget - 1, 0, -1)]
    return [*splits, (budget, 1)]


def bench_ingest_split(bundle: Path, manifest: Manifest, images: Path, backend: str, budget: int,
                       batch: int, offline_seconds: float, seed: int = 0, max_images: int = 0) -> dict[str, Any]:
    """{"budget", "batch", "offline" (engine alone, ``budget`` threads), "rows" [{engine_threads,
    decode_threads, images_per_s, ratio}], "best" (the row with the highest ratio)}; the first
    ``max_images`` images of the folder (0 = all)."""
    solo = open_engine(bundle, manifest, backend, budget)
    offline = measure_point(solo, batch, warmup=2, seconds=offline_seconds, seed=seed)
    del solo
    items = items_from_folder(images)
    items = items[:max_images] if max_images else items
    rows = []
    for engine_threads, decode_threads in thread_splits(budget):
        engine = open_engine(bundle, manifest, backend, engine_threads)
        _, stats = build_index(engine, manifest, items, batch_size=batch, workers=decode_threads, progress=False)
        rows.append({"engine_threads": engine_threads, "decode_threads": decode_threads,
                     "images_per_s": stats.images_per_s, "ratio": stats.images_per_s / offline["images_per_s"]})
        _LOG.info("ingest split engine %d / decode %d: %.1f images/s (%.0f%% of the engine alone)",
                  engine_threads, decode_threads, stats.images_per_s, 100 * rows[-1]["ratio"])
    return {"budget": budget, "batch": batch, "backend": backend, "images": len(items), "offline": offline,
            "rows": rows, "best": max(rows, key=lambda row: row["ratio"])}


def split_markdown(label: str, result: dict[str, Any]) -> list[str]:
    """A table of one bundle's splits, the best one named."""
    best = result["best"]
    lines = [
        f"Decode / engine split for `{label}` ({result['images']} images, batch {result['batch']}, "
        f"{result['backend']}, budget {result['budget']} threads; engine alone: "
        f"{result['offline']['images_per_s']:,.1f} images/s). Best: {best['engine_threads']} engine + "
        f"{best['decode_threads']} decode threads = {best['ratio']:.0%} of the engine alone.",
        "",
        "| engine threads | decode threads | ingest images/s | of engine alone |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['engine_threads']} | {r['decode_threads']} | {r['images_per_s']:,.1f} | {r['ratio']:.0%} |"
              for r in result["rows"]]
    return [*lines, ""]
