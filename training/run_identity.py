"""Whether a run folder holds the run a config asks for, before it is resumed or reused as finished.

Contract: ``config_differences(saved, wanted)`` lists every setting (``section.key``) whose value differs
between a run's recorded config and the requested one, except the settings in :data:`NOT_IDENTITY`, which
change how a run is watched or where it runs, not what it computes. Settings naming another run
(:data:`RUN_LINKS`: its teacher, architecture, refine source) are the same when the paths are, or when they
are the same relative to each side's own ``run.out_dir``, so a runs tree moved as a whole is still the same
runs, and so is a run folder renamed beside the runs it names. A setting the recorded config lacks
(it was written before the setting existed) is compared as its default, the behaviour of that time; a setting
only the recorded config has (since removed) is not compared. ``check_same_run`` raises
:class:`RunMismatch` naming the file, each differing setting with both values, and the ways on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["NOT_IDENTITY", "RUN_LINKS", "RunMismatch", "config_differences", "check_same_run"]

NOT_IDENTITY = frozenset({
    "run.out_dir",  # the folder itself, however the path was spelled
    "run.progress", "run.log_every", "run.device",
    "data.num_workers", "data.on_error", "data.eval_batch_size",
})
"""Settings that may differ between the run in a folder and the config resuming or reusing it."""


RUN_LINKS = frozenset({"cdd.teacher_run", "cdd.static_arch", "cdd.refine_from"})
"""Settings that name another run's folder or file, compared relative to the run's own folder."""


class RunMismatch(ValueError):
    """The run folder holds a run trained with other settings than the ones asked for."""


def config_differences(saved: dict[str, Any], wanted: dict[str, Any], defaults: dict[str, Any] | None = None
                       ) -> list[tuple[str, Any, Any]]:
    """``(section.key, saved value, wanted value)`` for every compared setting that differs, sorted by name;
    ``defaults`` (same shape) stands in for settings ``saved`` lacks."""
    out = []
    defaults = defaults or {}
    folders = [Path(str(config.get("run", {}).get("out_dir", "."))) for config in (saved, wanted)]
    for section in sorted(set(saved) & set(wanted)):
        old, new = saved[section], wanted[section]
        if not (isinstance(old, dict) and isinstance(new, dict)):
            if old != new:
                out.append((section, old, new))
            continue
        recorded_default = defaults.get(section, {})
        for key in sorted(set(new) & (set(old) | set(recorded_default))):
            name = f"{section}.{key}"
            if name in NOT_IDENTITY:
                continue
            if key not in old:
                old = {**old, key: recorded_default[key]}
            if name in RUN_LINKS and old[key] and new[key]:  # the same path, or the same place beside the run
                same = old[key] == new[key] or _relative(old[key], folders[0]) == _relative(new[key], folders[1])
            else:
                same = _normalised(old[key]) == _normalised(new[key])
            if not same:
                out.append((name, old[key], new[key]))
    return out


def check_same_run(config_file: Path, wanted: dict[str, Any]) -> None:
    """Raise :class:`RunMismatch` when the config recorded in ``config_file`` differs from ``wanted``."""
    from training.config import TrainConfig

    saved = json.loads(Path(config_file).read_text())
    differences = config_differences(saved, wanted, TrainConfig().to_dict())
    if differences:
        listed = "; ".join(f"{name}: the run has {old!r}, asked for {new!r}" for name, old, new in differences)
        raise RunMismatch(
            f"{config_file}: this folder holds a run with other settings ({listed}); train into another folder "
            f"(--set run.out_dir=\"NEW\"), delete it to start over (`cdd-train --force` deletes the run's files), or "
            "ask for the run's own settings")


def _relative(path: str, run_folder: Path) -> str:
    return os.path.relpath(os.path.abspath(path), os.path.abspath(run_folder))


def _normalised(value: Any) -> Any:
    """Lists and tuples compare alike (JSON has no tuples)."""
    if isinstance(value, tuple | list):
        return [_normalised(v) for v in value]
    return value
