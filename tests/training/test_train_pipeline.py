"""`make train`'s pipeline: completed stages are skipped, and the final table reports both runs."""

import json

import pytest

from tiny_training import tiny_overrides
from training.pipeline import format_table, main, run_stage
from training.run_identity import RunMismatch


def test_completed_runs_are_not_retrained(tiny_reid_root, teacher_run, student_run):
    # the fixture trained demo-teacher's preset with the student overrides (tests/conftest.py)
    before = (student_run / "checkpoint.pt").stat().st_mtime_ns
    final = run_stage("demo-teacher", tiny_overrides(tiny_reid_root, student_run, "student", teacher_run)
                      + ["run.progress=true", "data.num_workers=1"])  # how a run is watched is not its identity
    assert final == json.loads((student_run / "metrics.json").read_text())["final"]
    assert (student_run / "checkpoint.pt").stat().st_mtime_ns == before


def test_a_finished_run_with_other_settings_is_refused_not_reused(tiny_reid_root, teacher_run, student_run):
    before = (student_run / "checkpoint.pt").stat().st_mtime_ns
    config_before = (student_run / "config.json").read_text()
    with pytest.raises(RunMismatch) as caught:
        run_stage("demo-teacher", tiny_overrides(tiny_reid_root, student_run, "student", teacher_run)
                  + ["optim.lr=0.07"])
    message = str(caught.value)
    assert str(student_run / "config.json") in message
    assert "optim.lr: the run has 0.05, asked for 0.07" in message
    assert message.count(", asked for ") == 1  # nothing else differs
    assert (student_run / "checkpoint.pt").stat().st_mtime_ns == before
    assert (student_run / "config.json").read_text() == config_before


def test_table_has_both_runs_and_reductions(teacher_run, student_run):
    teacher = json.loads((teacher_run / "metrics.json").read_text())["final"]
    student = json.loads((student_run / "metrics.json").read_text())["final"]
    table = format_table(teacher, student)
    assert f"{teacher['params']:,}" in table and f"{student['flops']:,}" in table
    assert f"-{student['flops_reduction']:.1f}%" in table and "mAP %" in table


def test_unknown_preset_family_is_a_clear_error(capsys):
    assert main(["--preset", "no-such-family"]) == 2
    assert "not found" in capsys.readouterr().err
