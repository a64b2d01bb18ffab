"""Where a result came from: the date, the commit of the code that produced it and the machine it ran on.

A stamp is a small JSON object: ``{"date": "2026-12-07T01:55:00Z", "commit": "<40 hex>", "dirty": false,
"machine": {"cpu": "AMD EPYC", "cpu_flags": [...], "cores": 2}}``. ``dirty`` says the working tree had
uncommitted changes to tracked files, so the commit alone does not reproduce the result. ``commit`` is None
outside a git checkout. Stdlib only.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["SIMD_FAMILIES", "machine_stamp", "run_stamp", "simd_summary", "stamp_line", "StampError"]

SIMD_FAMILIES = {
    "avx2": ("avx2",),
    "avx512": ("avx512f",),
    "vnni": ("avx512_vnni", "avx_vnni"),
    "amx": ("amx_tile", "amx_int8", "amx_bf16"),
}
"""The instruction-set families that decide which int8/fp32 kernels ONNX Runtime, torch and FAISS use, and the
/proc/cpuinfo flags that show each."""

_FLAGS = tuple(flag for flags in SIMD_FAMILIES.values() for flag in flags) + ("fma",)


class StampError(ValueError):
    """A results file without a usable stamp."""


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def machine_stamp() -> dict[str, Any]:
    """{"cpu": model name, "cpu_flags": the SIMD flags of SIMD_FAMILIES (and fma) this CPU has, "cores": usable
    cores}. The host name is not recorded."""
    cpu, flags = "", []
    for line in _cpuinfo():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "Hardware") and value.strip() and not cpu:
            cpu = value.strip()
        if key.strip() in ("flags", "Features") and not flags:
            present = set(value.split())
            flags = [flag for flag in _FLAGS if flag in present]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return {"cpu": cpu or platform.processor() or platform.machine(), "cpu_flags": flags, "cores": cores}


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def run_stamp(repo: str | Path = ".", now: datetime.datetime | None = None) -> dict[str, Any]:
    """A stamp for a result produced now by the code checked out in ``repo``."""
    repo = Path(repo)
    now = now or datetime.datetime.now(datetime.UTC)
    commit = _git(["rev-parse", "HEAD"], repo)
    changes = _git(["status", "--porcelain", "--untracked-files=no"], repo)
    return {"date": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "commit": commit,
            "dirty": bool(changes) if commit is not None else None, "machine": machine_stamp()}


def simd_summary(flags: list[str]) -> str:
    """"avx2 yes, avx512 no, vnni no, amx no" for a list of /proc/cpuinfo flags."""
    present = set(flags)
    return ", ".join(f"{family} {'yes' if present & set(names) else 'no'}" for family, names in SIMD_FAMILIES.items())


def stamp_line(stamp: Any, source: str) -> str:
    """The italic line under a rendered table: file, date, commit and machine. Raises StampError naming
    ``source`` when the stamp is missing or lacks a field."""
    fix = f"add one with `python -m training.results stamp {source}` on the machine and commit that produced it"
    if not isinstance(stamp, dict):
        raise StampError(f"{source}: no \"stamp\" object (date, commit, machine); {fix}")
    missing = [key for key in ("date", "commit", "machine") if key not in stamp]
    machine = stamp.get("machine")
    if not missing and not (isinstance(machine, dict) and "cpu" in machine and "cpu_flags" in machine):
        missing = ["machine.cpu", "machine.cpu_flags"]
    if missing:
        raise StampError(f"{source}: stamp lacks {', '.join(missing)}; {fix}")
    commit = (stamp["commit"] or "no git checkout")[:10] + (" + local changes" if stamp.get("dirty") else "")
    cores = f", {machine['cores']} cores" if machine.get("cores") else ""
    return (f"*From `{source}`: {stamp['date'][:10]}, commit {commit}, {machine['cpu']}{cores} "
            f"({simd_summary(machine['cpu_flags'])}).*")
