"""``make gpu-check`` (serving.benchmarks.gpu_check) where no GPU is: it runs nothing and says so; and how it
writes its results into docs/gpu.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_without_a_device_runs_nothing_and_keeps_the_results(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here: make gpu-check would run")
    doc = tmp_path / "gpu.md"
    doc.write_text((ROOT / "docs" / "gpu.md").read_text())
    before = doc.read_text()
    done = subprocess.run([sys.executable, "-m", "serving.benchmarks.gpu_check", "--doc", str(doc), "--work",
                           str(tmp_path / "work")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == (f"gpu-check: no CUDA device (torch.cuda.is_available() is False); nothing was "
                                   f"run and {doc} is unchanged")
    assert doc.read_text() == before and not (tmp_path / "work").exists()


def test_gpu_check_results_replace_only_the_results_section(tmp_path):
    from serving.benchmarks.gpu_check import RESULTS_MARK, Step, results_markdown, write_results

    doc = tmp_path / "gpu.md"
    doc.write_text((ROOT / "docs" / "gpu.md").read_text())
    static = doc.read_text().split(RESULTS_MARK)[0]
    bench = {"results": [{"backend": "tensorrt", "points": [{"batch": 8, "images_per_s": 5123.4, "p50_ms": 1.5,
                                                              "p99_ms": 2.25}]}]}
    steps = [Step("export", "passed", 12.3, "gate tensorrt ok"), Step("search", "failed", 4.0, "exit 1", ["boom"])]
    lines = results_markdown("NVIDIA H100 80GB HBM3 (compute capability 9.0)", steps, bench, "2026-12-07 03:00 UTC")
    write_results(doc, lines)
    write_results(doc, lines)  # a second run replaces the first
    text = doc.read_text()
    assert text.startswith(static) and text.count(RESULTS_MARK) == 1
    results = text.split(RESULTS_MARK)[1]
    assert "Run 2026-12-07 03:00 UTC on **NVIDIA H100 80GB HBM3 (compute capability 9.0)**." in results
    assert "| export | passed | 12 | gate tensorrt ok |" in results
    assert "| tensorrt | 8 | 5123 | 1.50 | 2.25 |" in results
    assert results.count("Output of the failed step \"search\"") == 1 and "boom" in results
