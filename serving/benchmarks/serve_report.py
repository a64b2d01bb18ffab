"""Markdown for the serving benchmark (`serving.benchmarks.serve`): servers side by side, the engines
alone, the tail at a fraction of saturation, the overload probe and the ratios."""

from __future__ import annotations

from typing import Any

from serving.benchmarks.report import number, table

__all__ = ["serve_markdown", "target_markdown"]


def _codes(codes: dict[str, Any]) -> str:
    failed = {code: n for code, n in codes.items() if code != "OK"}
    return ", ".join(f"{code} {int(n):,}" for code, n in sorted(failed.items())) or "0"


def _intro(result: dict[str, Any]) -> list[str]:
    cfg = result["config"]
    bundles = "; ".join(
        f"`{label}` = {b['name']} ({b['input']}, JPEG payloads of {number(b['payload_bytes_mean'], 0)} bytes)"
        for label, b in result["bundles"].items()
    )
    return [
        f"Every server runs in its own process; the load generator (grpc.aio callers, Search k={cfg['k']}) runs "
        f"in {cfg['load_processes']} other process(es) and its CPU share is reported. Bundles: {bundles}; "
        f"engine {result['backend']}; gallery {cfg['gallery_size']:,} random unit vectors (flat); cdd-serve "
        f"with {cfg.get('workers') or 'one per core'} worker process(es) unless named `1 process`, "
        f"batching up to {cfg['max_batch']} images within {cfg['max_wait_ms']:g} ms, or none (`unbatched`, "
        f"--max-batch 1); {cfg['seconds']:g} s of closed-loop load per concurrency level; payloads from "
        f"{result['payload_source']}. Server CPU per request: the server processes' user+system CPU time "
        "(/proc) over the window / successful requests; context switches likewise, from every thread's "
        "/proc status. Peak = best QPS over the concurrency levels.",
        "",
    ]


def _switches(per_request: dict[str, float] | None) -> str:
    if not per_request:
        return "–"
    return f"{per_request['voluntary']:.1f} / {per_request['involuntary']:.1f}"


def _server_rows(result: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, server in result["servers"].items():
        for clients, run in server["rows"].items():
            latency = run["latency"] or {}
            rows.append([
                name, clients, number(run["qps"]), number(latency.get("p50_ms"), 2),
                number(latency.get("p99_ms"), 2), number(run.get("server_cpu_ms_per_request"), 2),
                _switches(run.get("server_switches_per_request")), number(run.get("mean_batch"), 2),
                f"{run['generator_cpu_share'] * 100:.0f}%", _codes(run["codes"]),
            ])
    return rows


def serve_markdown(result: dict[str, Any], image: str | None = None) -> str:
    """The serving section (tables + ratios + plot link)."""
    lines = _intro(result)
    header = ["server", "clients", "QPS", "p50 ms", "p99 ms", "server CPU ms/request",
              "context switches/request (vol. / invol.)", "mean batch",
              "generator CPU", "errors"]
    lines += table(header, _server_rows(result))
    lines += ["", "The engines alone (same backend and thread budget as the servers, random images):", ""]
    lines += table(
        ["bundle", "batch", "images/s", "p50 ms per batch"],
        [[label, str(o["batch"]), number(o["images_per_s"]), number(o["p50_ms"], 2)]
         for label, o in result["offline"].items()],
    )
    tail, probe = result["tail"], result["overload"]
    latency = tail["latency"] or {}
    lines += [
        "",
        f"Tail: open-loop load on `{tail['bundle']} batched` at {number(tail['rate'])} requests/s "
        f"({result['config']['saturation_fraction']:.0%} of its peak): {number(tail['qps'])} QPS answered, "
        f"p50 {number(latency.get('p50_ms'), 2)} ms, p99 {number(latency.get('p99_ms'), 2)} ms, "
        f"p99 / p50 = {number(tail['p99_over_p50'], 2)}; errors {_codes(tail['codes'])}.",
        "",
        f"Overload probe: {probe['clients']} closed-loop callers against a demo cdd-serve capped at "
        f"{probe['cap']} concurrent calls (--max-concurrent-rpcs): the generator saw "
        f"{', '.join(f'{c} {n:,}' for c, n in sorted(probe['generator_codes'].items()))}; `/metrics` "
        f"counted {', '.join(f'{c} {int(n):,}' for c, n in sorted(probe['metrics_codes'].items()))} "
        f"({'the same' if probe['metrics_match'] else 'NOT the same'}).",
        "",
        *[f"- {name.replace('_', ' ')}: {number(value, 2)}" for name, value in result["ratios"].items()],
    ]
    if result.get("load_average_at_end"):
        load = ", ".join(f"{v:.2f}" for v in result["load_average_at_end"])
        lines += [f"- load average (1, 5, 15 min) at the end: {load}"]
    if image:
        lines += ["", f"![serving throughput and latency]({image})"]
    return "\n".join(lines).rstrip() + "\n"


def target_markdown(result: dict[str, Any]) -> str:
    """A running server driven at each concurrency level (``cdd-bench serve --target``)."""
    rows = []
    for clients, run in result["rows"].items():
        latency = run["latency"] or {}
        rows.append([clients, number(run["qps"]), number(latency.get("p50_ms"), 2),
                     number(latency.get("p99_ms"), 2), f"{run['generator_cpu_share'] * 100:.0f}%",
                     _codes(run["codes"])])
    lines = [f"Target: {result['target']}; {result['config']['seconds']:g} s per level.", ""]
    lines += table(["clients", "QPS", "p50 ms", "p99 ms", "generator CPU", "errors"], rows)
    return "\n".join(lines) + "\n"
