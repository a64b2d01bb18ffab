"""Markdown table of serve benchmark rounds (``cdd-bench serve`` writes ``OUT/serve.json``): per round, the
bare gRPC floors and cdd-serve at the same callers, side by side as measured in that round.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from training.results.tables import ResultsError, markdown_table

__all__ = ["serve_rounds_table"]

# Servers of a round, in column order: (name in serve.json, column label).
SERVERS = (("bare (sync)", "bare sync"), ("bare (aio)", "bare aio"), ("demo batched", "cdd-serve, 2 workers"),
           ("demo batched, 1 process", "cdd-serve, 1 process"))


def _row(server: dict[str, Any], callers: str) -> dict[str, Any]:
    return (server.get("rows") or {}).get(callers) or {}


def serve_rounds_table(results: Sequence[dict[str, Any]], sources: Sequence[str], callers: int = 16) -> str:
    """Per round (one results file each): QPS at ``callers`` closed-loop callers of every server in
    :data:`SERVERS` with its server CPU per request, and each cdd-serve's QPS over the bare sync server's of
    the same round (the ratio the serving target is stated in)."""
    rows = []
    for i, (result, source) in enumerate(zip(results, sources, strict=True)):
        servers = ((result.get("serve") or {}).get("servers")) or {}
        measured = {name: _row(servers.get(name) or {}, str(callers)) for name, _ in SERVERS}
        missing = [name for name, row in measured.items() if "qps" not in row]
        if missing:
            raise ResultsError(f"{source}: no {callers}-caller row for {missing} in \"serve.servers\"; run "
                               f"`cdd-bench serve --concurrency {callers} --serve-workers 0` again")
        bare = measured["bare (sync)"]["qps"]
        cells = []
        for name, _ in SERVERS:
            row = measured[name]
            ratio = "" if name.startswith("bare") else f" ({row['qps'] / bare:.2f})"
            cells.append(f"{row['qps']:,.0f}{ratio}; {row['server_cpu_ms_per_request']:.2f} ms")
        load = (result.get("machine") or {}).get("load_average") or [None]
        rows.append([str(i + 1), f"{load[0]:.2f}" if load[0] is not None else "", *cells])
    header = ["round", "load average at start"] + [
        f"{label}: QPS{'' if name.startswith('bare') else ' (of bare sync)'}; CPU/request" for name, label in SERVERS]
    return "\n".join(markdown_table(header, rows))
