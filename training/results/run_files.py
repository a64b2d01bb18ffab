"""Results files from run folders: ``collect`` a finished run, ``stamp`` a file that lacks a stamp, and the
``stamp.json`` a training run writes when it starts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cdd_common.atomic_file import write_text_atomic
from training.results.stamp import StampError, machine_stamp, run_stamp
from training.results.tables import ResultsError

__all__ = ["STAMP_FILE", "collect_run", "stamp_file", "write_run_stamp"]

STAMP_FILE = "stamp.json"


def _read(path: Path, what: str, fix: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultsError(f"{path}: {what} not found; {fix}") from None
    except ValueError as exc:
        raise ResultsError(f"{path}: {what} is not readable JSON ({exc}); {fix}") from exc
    if not isinstance(data, dict):
        raise ResultsError(f"{path}: {what} must be a JSON object; {fix}")
    return data


def write_run_stamp(run_dir: str | Path) -> dict[str, Any]:
    """Write ``run_dir/stamp.json`` (date, commit, machine) unless it exists; returns the run's stamp. A
    resumed run keeps the stamp of its start."""
    path = Path(run_dir) / STAMP_FILE
    if path.is_file():
        return _read(path, "run stamp", "delete it to stamp the run again")
    stamp = run_stamp()
    write_text_atomic(path, json.dumps(stamp, indent=2) + "\n")
    return stamp


def collect_run(run_dir: str | Path, stamp_now: bool = False) -> dict[str, Any]:
    """A finished run's results file: metrics.json (kind, epochs, final), ``config`` (config.json) and
    ``stamp`` (stamp.json, or a stamp made now when ``stamp_now``)."""
    run_dir = Path(run_dir)
    metrics = _read(run_dir / "metrics.json", "run metrics", "train the run first (cdd-train / make train)")
    if "final" not in metrics:
        raise ResultsError(f"{run_dir / 'metrics.json'}: the run has not finished (no \"final\" metrics); resume "
                           "it with cdd-train --resume")
    config = _read(run_dir / "config.json", "resolved config", "it is written when the run starts")
    if (run_dir / STAMP_FILE).is_file():
        stamp = _read(run_dir / STAMP_FILE, "run stamp", "delete it and pass --stamp-now")
    elif stamp_now:
        stamp = {**run_stamp(), "note": "stamped when collected, not when the run started"}
    else:
        raise StampError(f"{run_dir / STAMP_FILE}: not found (the run predates run stamps); pass --stamp-now to "
                         "stamp it with the current commit and this machine if that is where it ran")
    return {**metrics, "config": config, "stamp": stamp}


def stamp_file(path: str | Path, force: bool = False) -> None:
    """Add a stamp (now, HEAD, this machine) to the results file ``path``. A benchmark file's own ``machine``
    (cpu, cpu_flags) is kept as the stamp's machine. Refuses a stamped file unless ``force``."""
    path = Path(path)
    data = _read(path, "results file", "produce it first")
    if "stamp" in data and not force:
        raise StampError(f"{path}: already stamped ({data['stamp'].get('date')}); pass --force to replace it")
    stamp = run_stamp()
    machine = data.get("machine")
    if isinstance(machine, dict) and "cpu" in machine and "cpu_flags" in machine:
        stamp["machine"] = {**machine_stamp(), "cpu": machine["cpu"], "cpu_flags": list(machine["cpu_flags"]),
                            "cores": machine.get("usable_cores", machine_stamp()["cores"])}
    sort_keys = list(data) == sorted(data)  # keep the layout of files written with sorted keys
    write_text_atomic(path, json.dumps({**data, "stamp": stamp}, indent=2, sort_keys=sort_keys) + "\n")
