"""`make train`: train the preset's teacher (unless its run is complete), then its CDD student, then, when
the family has a ``<name>-refine`` preset, the refine stage (the CDD student's architecture trained further
from its final weights: the shipped student), then print the table. Interrupted runs resume from their last
epoch checkpoint; finished stages are skipped.

    python -m training.pipeline --preset demo     # presets demo-teacher, demo-student, demo-refine
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "run_stage", "finished_metrics", "has_refine_stage", "format_table"]


def finished_metrics(run_dir: Path) -> dict[str, Any] | None:
    """The final metrics of the run in ``run_dir``, None while it has none (never started or still training)."""
    metrics = run_dir / "metrics.json"
    if not metrics.is_file():
        return None
    return json.loads(metrics.read_text()).get("final")


def run_stage(preset: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Train ``preset`` (resuming an interrupted run) unless its run dir already holds final metrics; returns
    them. A finished or interrupted run trained with other settings is refused (`training.run_identity`)."""
    from training.config import load_config
    from training.data.split_summary import log_split
    from training.run_folder import claim_run_folder
    from training.run_identity import check_same_run

    cfg = load_config(preset, list(overrides))
    out = Path(cfg.run.out_dir)
    done = finished_metrics(out)
    if done is not None:
        if (out / "config.json").is_file():
            check_same_run(out / "config.json", cfg.to_dict())
        logging.getLogger("training").info("%s already trained in %s; skipping", preset, cfg.run.out_dir)
        return done
    log_split(cfg.data.dataset, cfg.data.root)
    claim_run_folder(cfg.run.out_dir, resume=True, force=False)
    from training.trainer import build_trainer

    return build_trainer(cfg, resume=True).fit()


def has_refine_stage(preset: str) -> bool:
    """Whether the preset family ``preset`` ends with a refine stage (a ``<preset>-refine`` preset exists)."""
    from training.config import PRESET_DIR

    return (PRESET_DIR / f"{preset}-refine.toml").is_file()


def format_table(teacher: dict[str, Any], student: dict[str, Any], refined: dict[str, Any] | None = None) -> str:
    """Markdown table of the runs' final metrics: params, FLOPs (MACs), mAP, rank-1 and the shipped student's
    change (the README's results table, `training.results.tables.teacher_student_table`)."""
    from training.results.tables import teacher_student_table

    return teacher_student_table({"final": teacher}, {"final": student},
                                 refined={"final": refined} if refined is not None else None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo", help="preset family: <name>-teacher and <name>-student")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override applied to both stages; repeatable")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    from training.config import ConfigError

    try:
        teacher = run_stage(f"{args.preset}-teacher", args.overrides)
        student = run_stage(f"{args.preset}-student", args.overrides)
        refined = run_stage(f"{args.preset}-refine", args.overrides) if has_refine_stage(args.preset) else None
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"train: {exc}", file=sys.stderr)
        return 2
    print()
    print(format_table(teacher, student, refined))
    return 0


if __name__ == "__main__":
    sys.exit(main())
