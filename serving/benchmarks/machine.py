"""What a benchmark ran on: CPU model, cores, RAM, OS, GPU, Python and library versions.

Versions come from installed package metadata, so describing the machine imports no library (torch
stays unimported unless a torch backend runs). The host name is deliberately not recorded.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["describe_machine", "usable_cores"]

_PACKAGES = {
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "faiss": ("faiss-cpu", "faiss-gpu", "faiss"),
    "torch": ("torch",),
    "numpy": ("numpy",),
    "grpcio": ("grpcio",),
    "tensorrt": ("tensorrt", "tensorrt-cu12"),
}


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "Hardware") and value.strip():
            return value.strip()
    return platform.processor() or platform.machine()


_SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
               "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve")
"""CPU feature flags that decide which kernels ONNX Runtime, torch and FAISS can use."""


def _cpu_flags() -> list[str]:
    for line in _read("/proc/cpuinfo").splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            present = set(value.split())
            return [flag for flag in _SIMD_FLAGS if flag in present]
    return []


def _ram_gib() -> float | None:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024**2, 1)
    return None


def _os_name() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return (
                f"{line.split('=', 1)[1].strip().strip(chr(34))} ({platform.system()} {platform.release()})"
            )
    return platform.platform()


def _version(names: tuple[str, ...]) -> str | None:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _gpus() -> list[str]:
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return []
    try:
        done = subprocess.run(
            [tool, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip()] if done.returncode == 0 else []


def describe_machine() -> dict[str, Any]:
    """JSON-serialisable facts: cpu, cpu_flags (the SIMD ones), logical_cores, usable_cores, ram_gib, os,
    python, gpus, versions, and load_average (1, 5, 15 min) when this was called: other work on the
    machine skews the numbers."""
    return {
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "ram_gib": _ram_gib(),
        "os": _os_name(),
        "python": platform.python_version(),
        "gpus": _gpus(),
        "versions": {key: _version(names) for key, names in _PACKAGES.items()},
        "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
