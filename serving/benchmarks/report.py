"""Markdown for benchmark results (one section per benchmark, the machine, the targets, the commands) and
atomic writes of the markdown, JSON and PNG files."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cdd_common.atomic_file import write_bytes_atomic, write_text_atomic
from serving.benchmarks.precision import int8_markdown_lines

__all__ = [
    "commands_markdown",
    "engine_markdown",
    "index_markdown",
    "machine_markdown",
    "number",
    "table",
    "targets_markdown",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]


def write_json_atomic(path: Path, data: Any) -> None:
    """JSON with sorted keys; non-finite floats become null (strict JSON)."""
    write_text_atomic(path, json.dumps(_finite(data), indent=2, sort_keys=True) + "\n")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def number(value: Any, digits: int = 1) -> str:
    """A table cell: thousands separators, ``digits`` decimals for floats, "–" for None / non-finite."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A markdown table's lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


_BUSY_LOAD = 0.5
_BUSY_WARNING = (
    "**Warning: the machine was busy when the benchmark started** (1-minute load {load:.2f} on {cores} "
    "cores). Multi-threaded runtimes (torch and FAISS OpenMP, ONNX Runtime) slow down by up to two orders "
    "of magnitude when another process holds a core; rerun on a quiet machine before trusting the numbers."
)


def machine_markdown(machine: dict[str, Any]) -> str:
    """Bullet list: CPU, cores, RAM, GPU, OS, versions, load average (with a warning when busy)."""
    versions = ", ".join(f"{name} {v}" for name, v in machine["versions"].items() if v) or "–"
    lines = [
        f"- CPU: {machine['cpu']}, {machine['usable_cores']} usable cores "
        f"({machine['logical_cores']} logical)",
        f"- CPU flags (SIMD): {' '.join(machine.get('cpu_flags') or []) or '–'}",
        f"- RAM: {number(machine['ram_gib'])} GiB",
        f"- GPU: {', '.join(machine['gpus']) or 'none'}",
        f"- OS: {machine['os']}",
        f"- Python {machine['python']}; {versions}",
    ]
    if machine.get("load_average"):
        load = ", ".join(f"{v:.2f}" for v in machine["load_average"])
        lines.append(f"- Load average (1, 5, 15 min) at the start: {load}")
        if machine["load_average"][0] > _BUSY_LOAD * machine["usable_cores"]:
            lines += [
                "",
                _BUSY_WARNING.format(load=machine["load_average"][0], cores=machine["usable_cores"]),
            ]
    return "\n".join(lines)


def commands_markdown(commands: Sequence[str]) -> str:
    return "\n".join(["```sh", *commands, "```"])


def _cost_cells(cost: dict[str, Any]) -> list[str]:
    return [number(cost.get("params"), 0), number(cost.get("flops"), 0)]


def engine_markdown(result: dict[str, Any], image: str | None = None) -> str:
    """Bundles, per-point latency / throughput, student vs teacher ratios, unavailable backends."""
    cfg = result["config"]
    per_point = f"{cfg['iters']} timed calls" if cfg["iters"] else f"{cfg['seconds']:g} s of calls"
    threads = result["threads"]
    lines = [
        f"Random uint8 images at each bundle's input size; {cfg['warmup']} warm-up calls, then {per_point} "
        f"per point. ONNX Runtime intra-op threads: {threads['onnxruntime_intra_op']}; torch threads: "
        f"{threads['torch']}. Latency is per `Engine.embed` call (one batch).",
        "",
        *table(
            ["bundle", "role", "precision", "input (HxW)", "dim", "params", "MACs", "max batch"],
            [
                [
                    b["label"],
                    b["role"],
                    b.get("precision", "fp32"),
                    "x".join(map(str, b["input_hw"])),
                    str(b["dim"]),
                    *_cost_cells(b["cost"]),
                    str(b["batch"]["max"]),
                ]
                for b in result["bundles"]
            ],
        ),
        "",
    ]
    if image:
        lines += [f"![engine latency and throughput]({image})", ""]
    lines += table(
        ["bundle", "backend", "batch", "p50 ms", "p90 ms", "p99 ms", "images/s", "first call ms"],
        [
            [
                r["bundle"],
                r["backend"],
                str(p["batch"]),
                number(p["p50_ms"], 2),
                number(p["p90_ms"], 2),
                number(p["p99_ms"], 2),
                number(p["images_per_s"]),
                number(p["first_call_ms"]),
            ]
            for r in result["results"]
            for p in r["points"]
        ],
    )
    lines += ["", *_ratio_lines(result["ratios"]), *int8_markdown_lines(result.get("int8_ratios", [])),
              *_engine_only_lines(result), *_unavailable_lines(result)]
    return "\n".join(lines).rstrip() + "\n"


def _ratio_lines(ratios: Sequence[dict[str, Any]]) -> list[str]:
    if not ratios:
        return ["No student / teacher comparison (needs exactly one teacher bundle).", ""]
    rows = []
    for r in ratios:
        efficiency = (
            r["throughput_ratio"] / r["flops_ratio"] if r["throughput_ratio"] and r["flops_ratio"] else None
        )
        rows.append(
            [
                r["backend"],
                str(r["batch"]),
                number(r["student_images_per_s"]),
                number(r["teacher_images_per_s"]),
                number(r["throughput_ratio"], 2),
                number(r["latency_ratio"], 2),
                number(r["flops_ratio"], 2),
                number(r["params_ratio"], 2),
                number(efficiency, 2),
            ]
        )
    intro = (
        "Student vs teacher: speed-up = student images/s / teacher images/s; latency ratio = teacher p50 / "
        "student p50; FLOPs and params ratios = teacher / student (manifest cost). A speed-up well below the "
        "FLOPs ratio (last column < 1) means time fell less than FLOPs did."
    )
    header = [
        "backend",
        "batch",
        "student img/s",
        "teacher img/s",
        "speed-up",
        "latency ratio",
        "FLOPs ratio",
        "params ratio",
        "speed-up / FLOPs ratio",
    ]
    return [intro, "", *table(header, rows), ""]


def _engine_only_lines(result: dict[str, Any]) -> list[str]:
    lines = []
    for run in result["results"]:
        for entry in run.get("engine_only", []):
            if "skipped" in entry:
                lines.append(
                    f"- {run['bundle']} / {run['backend']} engine-only, batch {entry['batch']}: "
                    f"skipped: {entry['skipped']}"
                )
            else:
                lines.append(
                    f"- {run['bundle']} / {run['backend']} engine-only (GPU timers), batch "
                    f"{entry['batch']}: p50 {number(entry['p50_ms'], 3)} ms, p99 "
                    f"{number(entry['p99_ms'], 3)} ms, {number(entry['images_per_s'])} images/s"
                )
    return ["TensorRT engine-only latency:", "", *lines, ""] if lines else []


def _unavailable_lines(result: dict[str, Any]) -> list[str]:
    if not result["unavailable"]:
        return []
    lines = ["Unavailable backends:", ""]
    lines += [f"- {u['backend']} ({u['bundle']}): {u['reason']}" for u in result["unavailable"]]
    return [*lines, ""]


def index_markdown(
    ingest: dict[str, Any] | None, search: dict[str, Any] | None, image: str | None = None
) -> str:
    """Ingestion throughput / busy fraction, and search latency / QPS / recall per size and type."""
    lines: list[str] = []
    if ingest is not None:
        lines += [
            f"Ingestion: real `build_index` (flat) of `{ingest['images_dir']}` with {ingest['workers']} "
            f"decode workers at batch {ingest['batch']} on {ingest['engine']['backend']}.",
            "",
            *table(
                [
                    "images",
                    "skipped",
                    "seconds",
                    "ingest images/s",
                    "offline images/s",
                    "busy fraction",
                    "pipeline engine-time fraction",
                ],
                [
                    [
                        number(ingest["images"], 0),
                        number(ingest["skipped"], 0),
                        number(ingest["seconds"], 2),
                        number(ingest["images_per_s"]),
                        number(ingest["offline"]["images_per_s"]),
                        number(ingest["busy_fraction"], 2),
                        number(ingest["pipeline_engine_busy_fraction"], 2),
                    ]
                ],
            ),
            "",
        ]
    if search is not None:
        lines += _search_lines(search, image)
    return "\n".join(lines).rstrip() + "\n"


def _search_lines(search: dict[str, Any], image: str | None) -> list[str]:
    cfg = search["config"]
    lines = [
        f"Search: {cfg['vectors']} random unit vectors of dim {search['dim']} (seed {cfg['seed']}), one "
        f"query per call through `GalleryIndex.search`, up to {cfg['max_queries']} queries or "
        f"{cfg['search_seconds']:g} s per point; recall@{cfg['k']} vs exact search on up to "
        f"{cfg['recall_queries']} of them. Approximate types run at their operating point: the smallest "
        f"nprobe / efSearch reaching recall@{cfg['k']} >= {cfg.get('target_recall', 0.95)} on a separate "
        f"draw of {cfg.get('tune_queries', 100)} queries (column options; the tuning trace is in the JSON). "
        f"IVF / IVF-PQ: nlist <= {cfg['nlist_max']}, "
        f"trained on at most {cfg['train_max']:,} items (the rest added afterwards), PQ "
        f"re-ranked exactly (refine 4); HNSW M {cfg['hnsw_m']}, efConstruction "
        f"{cfg['ef_construction']}. milvus-* rows are the Milvus store (embedded milvus-lite, one process, "
        "through pymilvus' gRPC client): every query pays an RPC and milvus-lite's own search, so expect "
        "milliseconds where in-process FAISS takes a fraction of one; its case is sharing one gallery "
        "between replicas and growing beyond one machine (a Milvus cluster), not single-node latency. "
        "FAISS threads: all cores to build, "
        f"{cfg.get('search_threads') or 'the default'} to search (one query per call gains nothing "
        "from more).",
        "",
    ]
    if image:
        lines += [f"![index search latency, recall and build time]({image})", ""]
    rows = [
        [
            number(r["size"], 0),
            r["type"],
            number(r["build_s"], 2),
            number(r["latency"]["p50_ms"], 3),
            number(r["latency"]["p99_ms"], 3),
            number(r["qps"]),
            number(r["recall"], 3)
            + ("" if (r.get("operating_point") or {}).get("reached", True) else " (below target)"),
            number(r["latency"]["calls"], 0),
            ", ".join(f"{k}={v}" for k, v in r["options"].items() if k != "seed") or "–",
        ]
        for r in search["rows"]
    ]
    lines += table(
        [
            "size",
            "type",
            "build s",
            "p50 ms",
            "p99 ms",
            "QPS (1 thread)",
            f"recall@{cfg['k']}",
            "queries",
            "options",
        ],
        rows,
    )
    if search["skipped"]:
        lines += [
            "",
            *[f"- {s['type']} at {number(s['size'], 0)}: skipped ({s['reason']})" for s in search["skipped"]],
        ]
    return [*lines, ""]


def targets_markdown(targets: Sequence[dict[str, Any]]) -> str:
    """One row per target: status met / NOT met / not measured."""
    status = {True: "met", False: "**not met**", None: "not measured"}
    rows = [
        [t["target"], number(t["measured"], 2), number(t["threshold"], 2), status[t["met"]], t["detail"]]
        for t in targets
    ]
    return "\n".join(table(["target", "measured", "threshold", "status", "detail"], rows)) + "\n"
