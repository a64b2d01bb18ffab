"""Markdown tables of serve benchmark rounds (``cdd-bench serve`` writes ``OUT/serve.json``): per round, the
bare gRPC floors and cdd-serve at the same callers, side by side as measured in that round; and where
cdd-serve's CPU per request goes, beside the CPU it may use to reach half the bare sync server's QPS
(with ``cdd-bench search-cost``'s ``OUT/search-cost.json``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from training.results.tables import ResultsError, markdown_table

__all__ = ["serve_budget_table", "serve_pairs_table", "serve_rounds_table"]

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


def _cpu_per_request(row: dict[str, Any]) -> tuple[float, float]:
    """(server, load generator) CPU milliseconds per request of one measured row."""
    return row["server_cpu_ms_per_request"], row["generator_cpu_s"] / row["requests"] * 1000.0


def serve_budget_table(results: Sequence[dict[str, Any]], sources: Sequence[str], cost: dict[str, Any],
                       callers: int = 16, cdd_serve: str = "demo batched") -> str:
    """Per round: server + load-generator CPU per request of the bare sync server and of ``cdd_serve``, the
    QPS ratio, and the server CPU per request at which cdd-serve reaches 0.5 of the bare sync server's QPS
    when both runs are CPU-bound (QPS = cores / (server + generator CPU per request), so the bound is
    2 x (bare server + its generator) - cdd-serve's generator). Then cdd-serve's server CPU split into the
    bare aio server's whole CPU per request (gRPC's own per-call work), the batch worker's steps at the
    round's mean batch (``cost``: the ``search_cost`` part of a search-cost result, nearest batch size it
    measured) and the rest (the project's front code, hand-offs, thread switches)."""
    sizes = sorted(int(size) for size in cost["batches"])
    rows = []
    for i, (result, source) in enumerate(zip(results, sources, strict=True)):
        servers = ((result.get("serve") or {}).get("servers")) or {}
        names = ("bare (sync)", "bare (aio)", cdd_serve)
        measured = {name: _row(servers.get(name) or {}, str(callers)) for name in names}
        missing = [name for name, row in measured.items() if "generator_cpu_s" not in row]
        if missing:
            raise ResultsError(f"{source}: no {callers}-caller row with generator CPU for {missing}; run "
                               f"`cdd-bench serve --concurrency {callers} --serve-workers 0` again")
        bare_server, bare_generator = _cpu_per_request(measured["bare (sync)"])
        server, generator = _cpu_per_request(measured[cdd_serve])
        floor = measured["bare (aio)"]["server_cpu_ms_per_request"]
        batch = min(sizes, key=lambda size: (abs(size - measured[cdd_serve]["mean_batch"]), size))
        steps = cost["batches"][str(batch)]["total_median_us"] / 1000.0
        allowed = 2.0 * (bare_server + bare_generator) - generator
        rows.append([str(i + 1), f"{bare_server:.2f} + {bare_generator:.2f}", f"{server:.2f} + {generator:.2f}",
                     f"{measured[cdd_serve]['qps'] / measured['bare (sync)']['qps']:.2f}", f"{allowed:.2f}",
                     f"{floor:.2f}", f"{steps:.2f} (batch {batch}; mean {measured[cdd_serve]['mean_batch']:.1f})",
                     f"{server - floor - steps:.2f}"])
    header = ["round", "bare sync: server + generator CPU, ms per request",
              "cdd-serve: server + generator CPU, ms per request", "QPS of bare sync",
              "cdd-serve server CPU allowed for 0.5, ms", "of cdd-serve's: bare aio server (gRPC floor), ms",
              "batch worker's steps (search-cost), ms", "rest: front code, hand-offs, switches, ms"]
    return "\n".join(markdown_table(header, rows))


def serve_pairs_table(first: Sequence[dict[str, Any]], second: Sequence[dict[str, Any]], sources: Sequence[str],
                      labels: tuple[str, str], callers: int = 16, server: str = "demo batched") -> str:
    """Rounds run as pairs (one results file each side, same command but one setting): per pair, ``server``'s
    QPS at ``callers`` (and over the bare sync server of its own run), server CPU per request and p99 on
    each side, then first minus second. ``sources`` names the first side's files, then the second's."""
    if len(first) != len(second) or len(sources) != 2 * len(first):
        raise ResultsError(f"{list(sources)}: a pair needs one file on each side ({len(first)} vs {len(second)})")
    rows = []
    for i, pair in enumerate(zip(first, second, strict=True)):
        cells, measured = [], []
        for result, source in zip(pair, (sources[i], sources[len(first) + i]), strict=True):
            servers = ((result.get("serve") or {}).get("servers")) or {}
            row, bare = _row(servers.get(server) or {}, str(callers)), _row(servers.get("bare (sync)") or {},
                                                                              str(callers))
            if "qps" not in row or "qps" not in bare or "p99_ms" not in (row.get("latency") or {}):
                raise ResultsError(f"{source}: no {callers}-caller row with latency for {server!r} and the bare "
                                   f"sync server; run `cdd-bench serve --concurrency {callers}` again")
            measured.append(row)
            cells.append(f"{row['qps']:,.0f} ({row['qps'] / bare['qps']:.2f}); "
                         f"{row['server_cpu_ms_per_request']:.2f} ms; {row['latency']['p99_ms']:.1f} ms")
        a, b = measured
        rows.append([str(i + 1), *cells, f"{a['qps'] - b['qps']:+,.0f}; "
                     f"{a['server_cpu_ms_per_request'] - b['server_cpu_ms_per_request']:+.2f} ms; "
                     f"{a['latency']['p99_ms'] - b['latency']['p99_ms']:+.1f} ms"])
    side = "QPS (of bare sync); CPU/request; p99"
    header = ["pair", f"{labels[0]}: {side}", f"{labels[1]}: {side}",
              f"{labels[0]} minus {labels[1]}: QPS; CPU/request; p99"]
    return "\n".join(markdown_table(header, rows))
