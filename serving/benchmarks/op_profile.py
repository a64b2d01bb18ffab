"""Where the time goes inside a bundle's ONNX Runtime CPU graph: per-op-type kernel time from ORT's profiler.

``cdd-bench profile --bundle DIR [--bundle DIR ...] --batch 32`` runs each bundle's ``model.onnx`` with
session profiling on, ``runs`` timed calls after ``warmup`` untimed ones on random images, and sums the
profiler's per-node kernel times by op type (Conv / QLinearConv / QuantizeLinear / DequantizeLinear /
Transpose / ReorderInput ...). Nodes ONNX Runtime fused at load time appear under the fused op's name
(e.g. ``FusedConv``, or a ``QLinearConv`` made from a QDQ group). Warm-up calls are excluded by counting
only the last ``runs`` "model_run" events and the node events inside them.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from serving.benchmarks.engine import random_images
from serving.bundle import load_bundle

__all__ = ["OP_GROUPS", "profile_bundle", "profile_markdown"]

OP_GROUPS = {
    "quantise/dequantise": ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"),
    "layout": ("Transpose", "ReorderInput", "ReorderOutput", "Reshape", "Flatten"),
}
"""Op types grouped for the summary line; every other op type counts as compute."""


def _session(path: Path, threads: int, prefix: str) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = prefix
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _op_times(events: list[dict[str, Any]], runs: int) -> tuple[dict[str, float], dict[str, int], float]:
    """Microseconds per op type and node counts inside the last ``runs`` model runs, and their total."""
    model_runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])[-runs:]
    windows = [(e["ts"], e["ts"] + e["dur"]) for e in model_runs]
    times: dict[str, float] = defaultdict(float)
    nodes: dict[str, set[str]] = defaultdict(set)
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        if any(start <= event["ts"] <= stop for start, stop in windows):
            op = event.get("args", {}).get("op_name", "?")
            times[op] += event["dur"]
            nodes[op].add(event["name"])
    return dict(times), {op: len(names) for op, names in nodes.items()}, float(sum(e["dur"] for e in model_runs))


def profile_bundle(bundle: Path, label: str, batch: int, runs: int, warmup: int, threads: int,
                   seed: int) -> dict[str, Any]:
    """Per-op-type time of ``bundle`` at ``batch``: {"label", "precision", "input_hw", "batch", "runs",
    "ms_per_run", "ops": [{"op", "nodes", "ms_per_run", "share"}] (slowest first), "groups": {group: share}}.
    Raises BundleError for a bad bundle, ValueError for runs < 1."""
    if runs < 1 or batch < 1:
        raise ValueError(f"--runs and --batch must be >= 1, found {runs} and {batch}")
    manifest = load_bundle(bundle)
    images = random_images(manifest, batch, seed)
    with tempfile.TemporaryDirectory(prefix="cdd-profile-") as tmp:
        session = _session(bundle / str(manifest.backends["onnxruntime"]), threads, str(Path(tmp) / "ort"))
        feed = {manifest.input.name: images}
        for _ in range(warmup + runs):
            session.run([manifest.output.name], feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    times, counts, total = _op_times(events, runs)
    kernel_total = sum(times.values()) or 1.0
    ops = [{"op": op, "nodes": counts[op], "ms_per_run": us / runs / 1000.0, "share": us / kernel_total}
           for op, us in sorted(times.items(), key=lambda item: -item[1])]
    groups = {name: sum(o["share"] for o in ops if o["op"] in members) for name, members in OP_GROUPS.items()}
    groups["compute"] = 1.0 - sum(groups.values())
    return {"label": label, "precision": manifest.precision, "input_hw": [manifest.input.height, manifest.input.width],
            "batch": batch, "runs": runs, "threads": threads, "ms_per_run": total / runs / 1000.0, "ops": ops,
            "groups": groups}


def profile_markdown(profiles: Sequence[dict[str, Any]], top: int = 12) -> str:
    """One table per profiled bundle: the ``top`` op types by kernel time, plus the group shares."""
    lines = ["Kernel time per op type from ONNX Runtime's profiler (CPU provider), per call of one batch; "
             "share = fraction of all kernel time.", ""]
    for p in profiles:
        groups = ", ".join(f"{name} {share:.0%}" for name, share in p["groups"].items())
        lines += [f"### {p['label']} ({p['precision']}, {p['input_hw'][0]}x{p['input_hw'][1]}, batch {p['batch']}, "
                  f"{p['threads']} threads): {p['ms_per_run']:.1f} ms per call", "", f"Groups: {groups}.", "",
                  "| op type | nodes | ms per call | share |", "|---|---:|---:|---:|"]
        lines += [f"| {o['op']} | {o['nodes']} | {o['ms_per_run']:.2f} | {o['share']:.1%} |" for o in p["ops"][:top]]
        lines.append("")
    return "\n".join(lines)
