"""A run folder is written by one run: `claim_run_folder` refuses to start a new run over an earlier one unless
the caller resumes it or forces a fresh start, and writes the run's stamp (`training.results.run_files`).
"""

from __future__ import annotations

import os
from pathlib import Path

from training.results.run_files import STAMP_FILE, write_run_stamp

__all__ = ["RUN_FILES", "RunFolderInUse", "claim_run_folder"]

RUN_FILES = ("checkpoint.pt", "metrics.json", "arch.json", "config.json", "curves.png", STAMP_FILE)
"""The files a training run writes into its folder."""


class RunFolderInUse(ValueError):
    """The run folder holds an earlier run and neither resuming nor forcing was asked for."""


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def claim_run_folder(out_dir: str | Path, resume: bool, force: bool) -> None:
    """Make ``out_dir`` ready for a run. An earlier run's files there are kept with ``resume`` (the trainer
    continues from its checkpoint), deleted with ``force`` (only the files a run writes, not the folder), and
    otherwise refused with RunFolderInUse naming them and the three ways on. Then the run's stamp is written
    (kept when resuming). Only rank 0 of a data-parallel group deletes or writes."""
    out = Path(out_dir)
    earlier = [name for name in RUN_FILES if (out / name).exists()]
    if earlier and not (resume or force):
        raise RunFolderInUse(
            f"{out} already holds a run ({', '.join(earlier)}); pass --resume to continue it, --force to start "
            f"over (those files are deleted), or --set run.out_dir=\"NEW\" to train into another folder")
    if not _is_main_process():
        return
    if force and not resume:
        for name in earlier:
            (out / name).unlink()
    out.mkdir(parents=True, exist_ok=True)
    write_run_stamp(out)
