"""Measure a :class:`~training.latency_table.LatencyTable` with ONNX Runtime on this machine's CPU.

Every prunable block is exported alone (``torch.onnx``, in memory, eval mode so BatchNorm folds into the
convs as in the deployed graph) at its input feature-map size and ``batch``, at a few kept widths: the
smallest the export can keep (``round_to``, or 1), the full width, and evenly spaced multiples of
``round_to`` between (``points`` in all). Each graph runs in its own ONNX Runtime CPU session with
``threads`` intra-op threads (1 inter-op thread, default graph optimisations) on a fixed random input; its
latency is the smallest of ``passes`` medians of ``rounds`` timed runs (after ``warmup`` runs), the passes
going round-robin over all graphs so that a burst of load from other processes cannot bias one width.
The fixed part is measured the same way as two graphs: uint8 images -> normalised float -> stem, and final
feature map -> pooled head -> L2 norm.
Finally the full-width network is timed as one graph next to the table's estimate of it.

:func:`table_for_run` is what the trainer calls: it measures at start and writes the table to the run dir,
or reuses the run dir's table when resuming (checking it was measured for the same settings).
"""

from __future__ import annotations

import inspect
import io
import logging
import os
import platform
import statistics
import time
import warnings
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.arch_spec import ArchSpec
from training.config import CDDConfig
from training.latency_table import LATENCY_TABLE_FILE, BlockLatency, LatencyTable
from training.models.network import ReIDNet

__all__ = ["GRID_POINTS", "kept_grid", "latency_key", "measure_latency_table", "table_for_run"]

log = logging.getLogger("training")

GRID_POINTS = 6
"""Measured widths per block (fewer for narrow blocks); linear interpolation between them."""


def kept_grid(width: int, round_to: int, points: int = GRID_POINTS) -> list[int]:
    """Increasing kept counts to measure for a block of ``width``: the export's smallest (``round_to`` or 1,
    at most ``width``), the full width, and evenly spaced multiples of ``round_to`` between."""
    step = max(1, round_to)
    low = min(width, step)
    raw = np.linspace(low, width, max(2, points))
    grid = {min(width, max(low, int(round(v / step)) * step)) for v in raw}
    return sorted(grid | {low, width})


def latency_key(spec: ArchSpec, cdd: CDDConfig) -> dict[str, Any]:
    """What a table is measured for; a resumed run must match it (JSON types: lists, not tuples)."""
    return {"runtime": cdd.latency_runtime, "batch": cdd.latency_batch, "threads": cdd.latency_threads,
            "input_size": list(spec.input_size), "depth": spec.depth, "width": spec.width,
            "last_stride": spec.last_stride, "embedding_dim": spec.embedding_dim, "round_to": max(1, cdd.round_to),
            "block_widths": [p for _, p in spec.blocks()]}


class _Stem(nn.Module):
    """uint8 (N, H, W, 3) -> normalised float NCHW -> conv1/bn1/relu/maxpool (the deploy graph's start)."""

    def __init__(self, net: ReIDNet) -> None:
        super().__init__()
        self.backbone = net.backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float().permute(0, 3, 1, 2) / 255.0 - 0.45) / 0.225
        return self.backbone.maxpool(self.backbone.relu(self.backbone.bn1(self.backbone.conv1(x))))


class _Head(nn.Module):
    """Final feature map -> pooled -> head -> L2-normalised embedding (the deploy graph's end)."""

    def __init__(self, net: ReIDNet) -> None:
        super().__init__()
        self.head = net.head

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        emb = self.head(fmap.mean(dim=(2, 3)))
        return emb / torch.linalg.vector_norm(emb, dim=1, keepdim=True).clamp_min(1e-6)


class _Whole(nn.Module):
    def __init__(self, net: ReIDNet) -> None:
        super().__init__()
        self.stem, self.head, self.blocks = _Stem(net), _Head(net), nn.Sequential(*net.backbone.blocks())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(images)))


class _OnnxRuntimeTimer:
    """Exports modules to ONNX in memory, opens an ONNX Runtime CPU session for each (:meth:`add`), then times
    them all (:meth:`measure`): ``passes`` round-robin passes of ``warmup`` + ``rounds`` runs each; a graph's
    latency is the smallest of its per-pass medians, so a burst of load from other processes during one
    pass does not enter the table."""

    def __init__(self, threads: int, warmup: int, rounds: int, passes: int) -> None:
        import onnxruntime as ort

        self.ort, self.warmup, self.rounds, self.passes = ort, warmup, rounds, passes
        self.options = ort.SessionOptions()
        self.options.intra_op_num_threads = threads
        self.options.inter_op_num_threads = 1
        self.rng = np.random.default_rng(0)
        self.exporter = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
        self.graphs: list[tuple[Any, dict[str, np.ndarray]]] = []

    def add(self, module: nn.Module, example: torch.Tensor) -> int:
        """Export ``module`` for inputs shaped like ``example``; returns its index in :meth:`measure`."""
        buffer = io.BytesIO()
        module.eval()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=UserWarning)
            torch.onnx.export(module, (example,), buffer, input_names=["x"], opset_version=17,
                              do_constant_folding=True, **self.exporter)
        session = self.ort.InferenceSession(buffer.getvalue(), self.options, providers=["CPUExecutionProvider"])
        if example.dtype == torch.uint8:
            feed = self.rng.integers(0, 256, size=tuple(example.shape), dtype=np.uint8)
        else:
            feed = self.rng.standard_normal(tuple(example.shape)).astype(np.float32)
        self.graphs.append((session, {"x": feed}))
        return len(self.graphs) - 1

    def measure(self) -> list[float]:
        """Latency (ms per run) of every added graph, in the order added."""
        best = [float("inf")] * len(self.graphs)
        for _ in range(self.passes):
            for g, (session, feed) in enumerate(self.graphs):
                times = []
                for i in range(self.warmup + self.rounds):
                    start = time.perf_counter()
                    session.run(None, feed)
                    if i >= self.warmup:
                        times.append(time.perf_counter() - start)
                best[g] = min(best[g], 1e3 * statistics.median(times))
        return best


def _block_inputs(spec: ArchSpec, batch: int) -> list[torch.Tensor]:
    """A zero input of each block's shape at ``batch`` (from one forward pass of the full network)."""
    net = ReIDNet(replace(spec, indicators=False, num_classes=0, kept_channels=None)).eval()
    shapes: list[tuple[int, ...]] = []
    handles = [b.register_forward_pre_hook(lambda _m, args: shapes.append(tuple(args[0].shape[1:])))
               for b in net.backbone.blocks()]
    with torch.no_grad():
        net(torch.zeros(1, 3, *spec.input_size))
    for h in handles:
        h.remove()
    return [torch.zeros(batch, *s) for s in shapes]


def _machine() -> dict[str, str]:
    """CPU model and feature flags (Linux /proc/cpuinfo; ``flags`` on x86, ``Features`` on ARM)."""
    info = {"cpu": platform.processor() or platform.machine(), "flags": "", "cpus": str(os.cpu_count())}
    try:
        fields = dict(line.partition(":")[::2] for line in Path("/proc/cpuinfo").read_text().split("\n\n")[0]
                      .splitlines())
    except OSError:
        return info
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    info["cpu"] = fields.get("model name", info["cpu"])
    info["flags"] = fields.get("flags", fields.get("Features", ""))
    return info


def measure_latency_table(spec: ArchSpec, cdd: CDDConfig, points: int = GRID_POINTS, warmup: int = 1,
                          rounds: int = 5, passes: int = 3) -> LatencyTable:
    """Measure the table of the full-width network ``spec`` for ``cdd``'s runtime, batch, threads and
    rounding (see the module docstring). Takes a few seconds for the demo network. The global torch random
    state is left as it was (the networks timed here are randomly initialised), so a run's training does
    not depend on whether a table was measured."""
    with torch.random.fork_rng(devices=[]):
        return _measure(spec, cdd, points, warmup, rounds, passes)


def _measure(spec: ArchSpec, cdd: CDDConfig, points: int, warmup: int, rounds: int, passes: int) -> LatencyTable:
    import onnxruntime as ort

    start = time.perf_counter()
    timer = _OnnxRuntimeTimer(cdd.latency_threads, warmup, rounds, passes)
    batch = cdd.latency_batch
    plain = replace(spec, indicators=False, num_classes=0, kept_channels=None)
    grids = [kept_grid(p, cdd.round_to, points) for _, p in plain.blocks()]
    inputs = _block_inputs(plain, batch)
    index: list[list[int]] = [[] for _ in grids]
    for i in range(max(len(g) for g in grids)):
        torch.manual_seed(i)
        net = ReIDNet(plain.with_kept([list(range(g[min(i, len(g) - 1)])) for g in grids])).eval()
        for b, block in enumerate(net.backbone.blocks()):
            if i < len(grids[b]):
                index[b].append(timer.add(block, inputs[b]))
    full = ReIDNet(plain).eval()
    images = torch.zeros(batch, *spec.input_size, 3, dtype=torch.uint8)
    with torch.no_grad():
        last = full.backbone(torch.zeros(1, 3, *spec.input_size)).shape[1:]
    fixed_index = {"stem": timer.add(_Stem(full), images), "head": timer.add(_Head(full), torch.zeros(batch, *last))}
    whole_index = timer.add(_Whole(full), images)
    ms = timer.measure()
    raw = [[ms[j] for j in idx] for idx in index]
    blocks = tuple(BlockLatency(name, p, tuple(g), tuple(float(v) for v in np.maximum.accumulate(r)), tuple(r))
                   for (name, p), g, r in zip(plain.blocks(), grids, raw, strict=True))
    table = LatencyTable(latency_key(spec, cdd), {k: ms[j] for k, j in fixed_index.items()}, blocks, _machine(),
                         ort.__version__)
    whole = {"measured_ms": ms[whole_index], "estimated_ms": table.full_ms()}
    measurement = {"warmup": warmup, "rounds": rounds, "passes": passes,
                   "statistic": "smallest per-pass median", "points": points, "opset": 17,
                   "seconds": round(time.perf_counter() - start, 2),
                   "measured_at": datetime.now(UTC).isoformat(timespec="seconds")}
    return replace(table, whole_network=whole, measurement=measurement)


def table_for_run(out_dir: str | Path, spec: ArchSpec, cdd: CDDConfig, resuming: bool) -> LatencyTable:
    """The run's latency table: reused from ``out_dir/latency_table.json`` when ``resuming`` and it exists
    (it must have been measured for the same settings: LatencyTableError otherwise), else measured now and
    written there atomically."""
    path = Path(out_dir) / LATENCY_TABLE_FILE
    if resuming and path.is_file():
        table = LatencyTable.load(path)
        table.check_key(latency_key(spec, cdd), str(path))
        log.info("latency table reused from %s (measured %s)", path, table.measurement.get("measured_at", "?"))
        return table
    table = measure_latency_table(spec, cdd)
    table.save(path)
    log.info("latency table measured in %.1f s with onnxruntime %s (%s, %d thread(s), batch %d): fixed part "
             "%.3f ms, full width estimated %.3f ms, measured as one graph %.3f ms; written to %s",
             table.measurement["seconds"], table.runtime_version, table.machine["cpu"], cdd.latency_threads,
             cdd.latency_batch, table.fixed_total_ms, table.whole_network["estimated_ms"],
             table.whole_network["measured_ms"], path)
    return table
