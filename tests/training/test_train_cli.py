"""cdd-train's guard rails: an earlier run is never overwritten silently, every preset is listed in --help,
the train/test split is logged before training."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from training.__main__ import build_parser, main
from training.config import PRESET_DIR
from training.data.layouts import load_dataset
from training.data.split_summary import describe_split
from training.run_folder import RunFolderInUse, claim_run_folder


def test_help_lists_every_preset_in_the_presets_folder() -> None:
    text = build_parser().format_help()
    names = sorted(p.stem for p in PRESET_DIR.glob("*.toml"))
    assert "paper-teacher" in names and "paper-student-budgeted" in names
    for name in names:
        assert f"\n  {name} " in text, f"{name} missing from cdd-train --help"


def _earlier_run(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text('{"kind": "teacher", "epochs": []}')
    (folder / "checkpoint.pt").write_bytes(b"weights")
    (folder / "notes.txt").write_text("mine")


def test_a_second_run_into_an_existing_run_folder_is_refused_without_resume_or_force(
        tiny_reid_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    _earlier_run(out)
    code = main(["--preset", "demo-teacher", "--set", f'run.out_dir="{out}"', "--set", f'data.root="{tiny_reid_root}"'])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{out} already holds a run (checkpoint.pt, metrics.json); pass --resume" in err and "--force" in err
    assert (out / "checkpoint.pt").read_bytes() == b"weights"
    assert not (out / "stamp.json").exists()


def test_force_deletes_only_the_earlier_runs_files_and_stamps_the_new_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _earlier_run(out)
    with pytest.raises(RunFolderInUse):
        claim_run_folder(out, resume=False, force=False)
    claim_run_folder(out, resume=False, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "stamp.json"]
    assert set(json.loads((out / "stamp.json").read_text())) >= {"date", "commit", "machine"}


def test_resume_keeps_the_run_and_the_stamp_of_its_start(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _earlier_run(out)
    (out / "stamp.json").write_text('{"date": "2026-01-01T00:00:00Z", "commit": "abc", "machine": {}}')
    claim_run_folder(out, resume=True, force=False)
    assert (out / "checkpoint.pt").read_bytes() == b"weights"
    assert json.loads((out / "stamp.json").read_text())["commit"] == "abc"


def test_class_folder_split_names_the_training_and_the_test_classes(tmp_path: Path) -> None:
    root = tmp_path / "flowers"
    for name, count in (("rose", 2), ("daisy", 3), ("tulip", 1), ("iris", 2), ("lily", 1)):
        (root / name).mkdir(parents=True)
        for i in range(count):
            (root / name / f"{i}.jpg").write_bytes(b"")
    lines = describe_split(load_dataset("folder", root), root)
    assert lines[1:] == ["  train: 5 images of 2 classes (daisy, iris)",
                         "  test: 4 images of 3 classes (lily, rose, tulip)"]


def test_reid_split_is_logged_before_training(tiny_reid_root: Path, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "run"
    _earlier_run(out)
    with caplog.at_level(logging.INFO, logger="training"):
        main(["--preset", "demo-teacher", "--set", f'run.out_dir="{out}"', "--set", f'data.root="{tiny_reid_root}"'])
    lines = [r.getMessage() for r in caplog.records if r.name == "training"]
    splits = load_dataset("market1501", tiny_reid_root)
    train_ids = sorted({r.pid for r in splits.train})
    assert lines[1] == (f"  train: {len(splits.train):,} images of {len(train_ids)} identities "
                        f"({', '.join(map(str, train_ids))})")
    assert lines[2].startswith(f"  query: {len(splits.query):,} images of ")


def test_quiet_is_run_progress_false(capsys: pytest.CaptureFixture[str]) -> None:
    def progress(*argv: str) -> bool:
        assert main(["--preset", "demo-teacher", *argv, "--print-config"]) == 0
        return json.loads(capsys.readouterr().out)["run"]["progress"]

    assert progress() is True
    assert progress("--quiet") is False
    assert progress("--set", "run.progress=false") is False
