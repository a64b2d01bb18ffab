"""Training step time: plain distillation vs CDD with retrieval-guided gradient resetting.

Both modes run the same teacher + student forward, losses, backward and optimizer step on the same
batches; "cdd" adds the memory push, top-k retrieval, reset-set intersection and gradient rewrite.
The overhead must stay under 20% of the step. The teacher is a freshly initialised network of the
preset's architecture (step time does not depend on its weights), so no run dir is needed.

    python -m training.bench_step --preset demo-student --steps 20 --out docs/step_time.json
    python -m training.bench_step --preset paper-student --set data.dataset=... (GPU)
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

__all__ = ["bench_step", "main"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_step(preset: str, overrides: Sequence[str], steps: int, warmup: int, batch: int,
               num_classes: int, memory_size: int) -> dict[str, Any]:
    """Median step seconds for "distill" (no resetting) and "cdd" (resetting on) on random batches."""
    from training.arch_spec import ArchSpec
    from training.config import load_config
    from training.cost import deployed_cost
    from training.distributed import resolve_device
    from training.models.network import ReIDNet
    from training.step import build_step

    cfg = load_config(preset, list(overrides))
    # the resetter is timed while its reset set grows (the costly phase): no budget closes it, and no
    # decay deadline applies (steps_left is not passed)
    cfg = replace(cfg, cdd=replace(cfg.cdd, memory_size=memory_size, flops_budget=0.0, latency_budget_ms=0.0))
    device = resolve_device(cfg.run.device)
    m, d = cfg.model, cfg.data
    spec = ArchSpec(depth=m.depth, width=m.width, last_stride=m.last_stride, embedding_dim=m.embedding_dim,
                    num_classes=num_classes, input_size=(d.height, d.width))
    teacher = ReIDNet(spec).to(device).eval()
    student = ReIDNet(replace(spec, indicators=True)).to(device).train()
    step = build_step(cfg, student, device, teacher, deployed_cost(spec).flops)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, d.height, d.width, generator=generator).to(device)
    labels = torch.arange(batch, device=device) // max(1, d.k) % num_classes
    results: dict[str, Any] = {}
    for mode in ("distill", "cdd", "distill", "cdd"):  # interleaved twice to cancel drift
        times = []
        for i in range(warmup + steps):
            _sync(device)
            start = time.perf_counter()
            step(images, labels, grg_active=mode == "cdd")
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
        results.setdefault(mode, []).extend(times)
    summary = {mode: {"median_s": statistics.median(t), "mean_s": statistics.fmean(t), "steps": len(t)}
               for mode, t in results.items()}
    overhead = summary["cdd"]["median_s"] / summary["distill"]["median_s"] - 1
    memory = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return {"preset": preset, "overrides": list(overrides), "device": _describe(device), "batch": batch,
            "input_size": [d.height, d.width], "depth": m.depth, "width": m.width, "memory_size": memory_size,
            "topk": cfg.cdd.topk, "modes": summary, "resetting_overhead_percent": 100 * overhead,
            "target_met": overhead < 0.20, "cuda_max_memory_bytes": memory,
            "peak_rss_bytes": peak_rss}


def _describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.bench_step", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo-student")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=0, help="images per step (default p*k of the preset)")
    parser.add_argument("--classes", type=int, default=100, help="identity classes of the random problem")
    parser.add_argument("--memory-size", type=int, default=0, help="GRG memory entries (default: preset)")
    parser.add_argument("--out", type=Path, help="write the JSON result here")
    args = parser.parse_args(argv)
    from training.config import load_config

    cfg = load_config(args.preset, args.overrides)
    batch = args.batch or cfg.data.p * cfg.data.k
    result = bench_step(args.preset, args.overrides, args.steps, args.warmup, batch, args.classes,
                        args.memory_size or cfg.cdd.memory_size)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
