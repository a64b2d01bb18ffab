"""PNG plots of benchmark results, rendered with matplotlib's object API (no pyplot, no global state).

Each function takes the result dict of one benchmark and returns PNG bytes; `report` writes them.
"""

from __future__ import annotations

import io
from typing import Any

__all__ = ["engine_plot", "index_plot", "serve_plot"]

_DPI = 110


def _figure(columns: int) -> Any:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.2 * columns, 4.0), dpi=_DPI, layout="constrained")
    return figure, figure.subplots(1, columns, squeeze=False)[0]


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def engine_plot(result: dict[str, Any]) -> bytes:
    """p50 latency (ms) and images/s vs batch size, one line per bundle x backend (teacher dashed)."""
    figure, (latency, throughput) = _figure(2)
    for run in result["results"]:
        if not run["points"]:
            continue
        batches = [p["batch"] for p in run["points"]]
        style = "--" if run["role"] == "teacher" else "-"
        label = f"{run['bundle']} / {run['backend']}"
        latency.plot(batches, [p["p50_ms"] for p in run["points"]], style, marker="o", label=label)
        throughput.plot(batches, [p["images_per_s"] for p in run["points"]], style, marker="o", label=label)
    sizes = sorted({p["batch"] for run in result["results"] for p in run["points"]})
    for axes, title, unit in (
        (latency, "latency (p50)", "ms per batch"),
        (throughput, "throughput", "images/s"),
    ):
        axes.set_xscale("log", base=2)
        if sizes:
            axes.set_xticks(sizes, [str(size) for size in sizes])
        axes.set_yscale("log")
        axes.set_xlabel("batch size")
        axes.set_ylabel(unit)
        axes.set_title(title)
        axes.grid(True, which="both", alpha=0.3)
    if result["results"]:
        throughput.legend(fontsize=7)
    return _png(figure)


def serve_plot(result: dict[str, Any]) -> bytes:
    """QPS and p99 latency vs concurrency, one line per server (bare servers dashed)."""
    figure, (rate, tail) = _figure(2)
    for name, server in result["servers"].items():
        levels = [int(c) for c in server["rows"]]
        rows = list(server["rows"].values())
        style = "--" if server["kind"] == "bare" else "-"
        rate.plot(levels, [r["qps"] for r in rows], style, marker="o", label=name)
        tail.plot(levels, [(r["latency"] or {}).get("p99_ms", float("nan")) for r in rows], style, marker="o",
                  label=name)
    for axes, title, unit in ((rate, "throughput", "requests/s"), (tail, "p99 latency", "ms")):
        axes.set_xscale("log", base=2)
        axes.set_yscale("log")
        axes.set_xlabel("concurrent callers")
        axes.set_ylabel(unit)
        axes.set_title(title)
        axes.grid(True, which="both", alpha=0.3)
    rate.legend(fontsize=7)
    return _png(figure)


def index_plot(result: dict[str, Any]) -> bytes:
    """Search p50 latency, recall@k and build seconds vs gallery size, one line per index type."""
    from matplotlib.ticker import NullFormatter

    figure, (latency, recall, build) = _figure(3)
    types = list(dict.fromkeys(row["type"] for row in result["rows"]))
    for index_type in types:
        rows = sorted((r for r in result["rows"] if r["type"] == index_type), key=lambda r: r["size"])
        sizes = [r["size"] for r in rows]
        latency.plot(sizes, [r["latency"]["p50_ms"] for r in rows], marker="o", label=index_type)
        recall.plot(sizes, [r["recall"] for r in rows], marker="o", label=index_type)
        build.plot(sizes, [max(r["build_s"], 1e-4) for r in rows], marker="o", label=index_type)
    k = result["config"]["k"]
    for axes, title, unit in (
        (latency, "search latency (1 query, p50)", "ms"),
        (recall, f"recall@{k} vs exact", "recall"),
        (build, "build time", "s"),
    ):
        axes.set_xscale("log")
        axes.xaxis.set_minor_formatter(NullFormatter())
        if axes is not recall:
            axes.set_yscale("log")
            axes.yaxis.set_minor_formatter(NullFormatter())
        axes.set_xlabel("gallery size")
        axes.set_ylabel(unit)
        axes.set_title(title)
        axes.grid(True, which="both", alpha=0.3)
    recall.set_ylim(0.0, 1.05)
    if types:
        latency.legend(fontsize=8)
    return _png(figure)
