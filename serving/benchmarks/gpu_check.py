"""``make gpu-check`` / ``python -m serving.benchmarks.gpu_check``: the GPU paths, run once on a GPU, written to
docs/gpu.md with the device named.

Steps, each a subprocess with its own time limit (420 s in all at most, so the check ends within 8 minutes),
in one work folder:
1. the environment: ``cdd-serve --check-gpu``;
2. the GPU-marked tests: ``pytest -m "gpu or tensorrt"``;
3. an fp16 TensorRT export of the shipped demo student (``runs/demo/refine``; the tests' tiny student when that run
   is absent, and the report says so) with ``--tensorrt required``, so its TensorRT parity gate runs;
4. the served path on TensorRT: a flat index of gallery images, ``cdd-serve --backend tensorrt`` on a loopback
   port, and Search for a gallery image, which must find itself first;
5. ``cdd-bench engine`` with TensorRT, ONNX Runtime CUDA and ONNX Runtime CPU.
A step that fails is reported with its output tail (a skipped GPU test counts as failed: a GPU path that did
not run) and the next steps that need it are skipped. Without a
CUDA device nothing runs: the exit status is 2 and the results in docs/gpu.md are left as they are.
Exit status: 0 every step passed, 1 a step failed, 2 no CUDA device.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["Step", "main", "results_markdown", "write_results"]

ROOT = Path(__file__).resolve().parents[2]
BUDGET_S = 420.0
"""Seconds all steps may take together (each also has its own limit), so the check ends within 8 minutes."""
RESULTS_MARK = "<!-- results: written by `make gpu-check` below this line -->"
BACKENDS = "tensorrt,onnxruntime-cuda,onnxruntime-cpu"
_PYTEST_COUNTS = re.compile(r"\d+ (passed|failed|skipped|deselected|error)")


@dataclass
class Step:
    """One step's outcome: ``status`` "passed" | "failed" | "skipped", seconds taken, one-line ``summary``
    and the output ``tail`` worth keeping."""

    name: str
    status: str = "skipped"
    seconds: float = 0.0
    summary: str = ""
    tail: list[str] = field(default_factory=list)


_DEADLINE = [time.monotonic() + BUDGET_S]


def _run(step: Step, command: Sequence[str], timeout: float) -> subprocess.CompletedProcess | None:
    """Run ``command`` from the repository root for ``step`` for at most ``timeout`` seconds and what is left
    of the budget; None (and the step failed) on a timeout."""
    start = time.monotonic()
    timeout = max(1.0, min(timeout, _DEADLINE[0] - start))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1"}
    try:
        done = subprocess.run(list(command), cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        step.status, step.seconds = "failed", time.monotonic() - start
        step.summary = f"timed out after {timeout:.0f} s: {' '.join(command)}"
        step.tail = str(exc.stdout or "").splitlines()[-15:]
        return None
    step.seconds = time.monotonic() - start
    step.status = "passed" if done.returncode == 0 else "failed"
    step.tail = (done.stdout + done.stderr).splitlines()[-15:]
    if done.returncode != 0:
        step.summary = f"exit {done.returncode}: {' '.join(command)}"
    return done


def _device() -> tuple[str | None, str]:
    """(GPU name or None, why not)."""
    try:
        import torch
    except ImportError as exc:
        return None, f"torch is not installed ({exc})"
    if not torch.cuda.is_available():
        return None, "torch.cuda.is_available() is False"
    major, minor = torch.cuda.get_device_capability(0)
    return f"{torch.cuda.get_device_name(0)} (compute capability {major}.{minor})", ""


def _student(run: Path, work: Path) -> tuple[Path, Path, str]:
    """(run dir, its gallery image folder, what it is): ``run`` when it exists, else the tests' tiny student."""
    if (run / "checkpoint.pt").is_file():
        config = json.loads((run / "config.json").read_text())
        root = Path(config.get("data", {}).get("root", "data/synthetic-reid"))
        if not root.is_dir():
            subprocess.run([sys.executable, "-m", "training.data.synthetic", "--out", str(root)], cwd=ROOT,
                           check=True, timeout=300)
        return run, root / "bounding_box_test", f"{run} (the demo student)"
    sys.path.insert(0, str(ROOT / "tests" / "export"))
    from tiny_runs import build_tiny_runs  # the test suite's builder of real tiny run dirs

    runs = build_tiny_runs(work / "tiny-runs")
    return runs.student50, runs.data_root / "bounding_box_test", (
        f"{run} not found: the tests' tiny ResNet-50 student instead (make train writes the demo student)")


def _export(run: Path, bundle: Path, tensorrt: str) -> Step:
    step = Step("fp16 TensorRT export with its parity gate")
    done = _run(step, [sys.executable, "-m", "export", "--run", str(run), "--out", str(bundle), "--tensorrt",
                       tensorrt], timeout=240)
    if done is not None and done.returncode == 0:
        wanted = "gate tensorrt" if tensorrt == "required" else "gate onnxruntime"
        gate = [line.strip() for line in done.stdout.splitlines() if line.strip().startswith(wanted)]
        step.summary = gate[0] if gate else "no TensorRT gate line in the export summary"
        step.status = "passed" if gate else "failed"
    return step


def _search(bundle: Path, images: Path, work: Path, backend: str) -> Step:
    step = Step("Search through cdd-serve on TensorRT")
    index = work / "index"
    done = _run(step, [sys.executable, "-m", "serving.index", "build", "--bundle", str(bundle), "--images",
                       str(images), "--out", str(index), "--quiet"], timeout=120)
    if done is None or done.returncode != 0:
        return step
    from serving.benchmarks.server_process import ServerProcess
    from serving.client import RetrievalClient

    start = time.monotonic()
    query = sorted(images.glob("*.jpg"))[0]
    args = ["--bundle", str(bundle), "--index", str(index), "--backend", backend, "--host", "127.0.0.1",
            "--port", "0"]
    server = ServerProcess("serving.server", args, "cdd-serve")
    try:
        server.start(timeout=max(10.0, min(120.0, _DEADLINE[0] - start)))
        with RetrievalClient(f"127.0.0.1:{server.port}", timeout=30) as client:
            hits, stats = client.search(query, k=5), client.stats()
    except Exception as exc:  # a server that does not start, or an RPC error: reported, not raised
        step.status, step.summary = "failed", f"{type(exc).__name__}: {str(exc)[:500]}"
        return step
    finally:
        server.stop()
    step.seconds += time.monotonic() - start
    found = bool(hits) and hits[0].score > 0.99 and stats.get("backend") == backend
    step.status = "passed" if found else "failed"
    step.summary = (f"backend {stats.get('backend')} on {stats.get('device')}, {stats.get('count')} items; query "
                    f"{query.name}: top hit {hits[0].id if hits else None} score "
                    f"{hits[0].score if hits else float('nan'):.4f}")
    return step


def _bench(bundle: Path, work: Path, backends: str) -> tuple[Step, dict | None]:
    step = Step("cdd-bench engine: TensorRT vs ONNX Runtime CUDA vs CPU")
    out = work / "bench"
    done = _run(step, [sys.executable, "-m", "serving.benchmarks", "engine", "--bundle", str(bundle), "--backends",
                       backends, "--batches", "1,8,32", "--engine-seconds", "2", "--out", str(out)], timeout=180)
    if done is None or done.returncode != 0:
        return step, None
    result = json.loads((out / "engine.json").read_text())["engine"]
    missing = [f"{u['backend']}: {u.get('reason', '')}" for u in result.get("unavailable", [])]
    step.summary = f"{len(result['results'])} backend(s) timed" + (f"; unavailable: {missing}" if missing else "")
    step.status = "passed" if not missing else "failed"
    return step, result


def results_markdown(device: str, steps: Sequence[Step], bench: dict | None, when: str) -> list[str]:
    """The results section of docs/gpu.md."""
    lines = ["", f"Run {when} on **{device}**.", "", "| step | result | seconds | detail |", "|---|---|---|---|"]
    for step in steps:
        detail = step.summary.replace("|", "/")
        lines.append(f"| {step.name} | {step.status} | {step.seconds:.0f} | {detail} |")
    if bench is not None:
        lines += ["", "| backend | batch | images/s | p50 ms | p99 ms |", "|---|---|---|---|---|"]
        for result in bench["results"]:
            for point in result["points"]:
                lines.append(f"| {result['backend']} | {point['batch']} | {point['images_per_s']:.0f} | "
                             f"{point['p50_ms']:.2f} | {point['p99_ms']:.2f} |")
    for step in steps:
        if step.status == "failed" and step.tail:
            lines += ["", f"Output of the failed step \"{step.name}\" (last lines):", "", "```", *step.tail, "```"]
    return lines


def write_results(doc: Path, lines: Sequence[str]) -> None:
    """Replace everything after RESULTS_MARK in ``doc`` with ``lines`` (atomically)."""
    text = doc.read_text()
    if RESULTS_MARK not in text:
        raise ValueError(f"{doc}: no line {RESULTS_MARK!r} to write the results under")
    head = text.split(RESULTS_MARK, 1)[0]
    partial = doc.with_suffix(".partial")
    with open(partial, "w") as handle:
        handle.write(head + RESULTS_MARK + "\n" + "\n".join(lines) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, doc)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo/refine"),
                        help="student run dir to export (the shipped demo student)")
    parser.add_argument("--work", type=Path, default=Path("build/gpu-check"), help="work folder (replaced)")
    parser.add_argument("--doc", type=Path, default=Path("docs/gpu.md"), help="markdown to write the results in")
    parser.add_argument("--rehearse-on-cpu", action="store_true",
                        help="run every step on the CPU (export --tensorrt off, ONNX Runtime CPU served and timed) to "
                             "try the plumbing on a machine without a GPU; writes no results")
    args = parser.parse_args(argv)
    device, why = _device()
    if args.rehearse_on_cpu:
        device = "the CPU (rehearsal: no GPU path ran)"
    if device is None:
        print(f"gpu-check: no CUDA device ({why}); nothing was run and {args.doc} is unchanged", file=sys.stderr)
        return 2
    print(f"gpu-check: {device}", flush=True)
    _DEADLINE[0] = time.monotonic() + BUDGET_S
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    environment = Step("environment (cdd-serve --check-gpu)")
    done = _run(environment, [sys.executable, "-m", "serving.server", "--check-gpu"], timeout=60)
    environment.summary = "; ".join(line.split("problem: ", 1)[1] for line in environment.tail if "problem: " in line)
    environment.status = "passed" if done is not None and done.returncode == 0 else "failed"
    tests = Step("GPU-marked tests (pytest -m 'gpu or tensorrt')")
    done = _run(tests, [sys.executable, "-m", "pytest", "-m", "gpu or tensorrt", "-rs", "-p", "no:cacheprovider",
                        "tests"], timeout=240)
    if done is not None:
        counts = [line for line in done.stdout.splitlines() if _PYTEST_COUNTS.search(line)]
        tests.summary = counts[-1].strip("= ") if counts else tests.summary
        skipped = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED")]
        if skipped and not args.rehearse_on_cpu:  # on a GPU, a skipped GPU test is a GPU path that did not run
            tests.status, tests.tail = "failed", skipped
    run, images, what = _student(args.run, work)
    tensorrt, serve, backends = ("off", "onnxruntime-cpu", "onnxruntime-cpu") if args.rehearse_on_cpu else (
        "required", "tensorrt", BACKENDS)
    export = _export(run, work / "bundle", tensorrt)
    export.summary = f"{what}: {export.summary}"
    steps, bench = [environment, tests, export], None
    if export.status == "passed":
        bench_step, bench = _bench(work / "bundle", work, backends)
        steps += [_search(work / "bundle", images, work, serve), bench_step]
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = results_markdown(device, steps, bench, when)
    if args.rehearse_on_cpu:
        print("\n".join(lines))
    else:
        write_results(args.doc, lines)
    for step in steps:
        print(f"gpu-check: {step.status:<7} {step.name}: {step.summary}")
    return 0 if all(step.status == "passed" for step in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
