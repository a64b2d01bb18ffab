"""`make train`'s pipeline: completed stages are skipped, and the final table reports both runs."""

import json

from tiny_training import tiny_overrides
from training.pipeline import format_table, main, run_stage


def test_completed_runs_are_not_retrained(tiny_reid_root, teacher_run, student_run):
    before = (student_run / "checkpoint.pt").stat().st_mtime_ns
    final = run_stage("demo-student", tiny_overrides(tiny_reid_root, student_run, "student", teacher_run))
    assert final == json.loads((student_run / "metrics.json").read_text())["final"]
    assert (student_run / "checkpoint.pt").stat().st_mtime_ns == before


def test_table_has_both_runs_and_reductions(teacher_run, student_run):
    teacher = json.loads((teacher_run / "metrics.json").read_text())["final"]
    student = json.loads((student_run / "metrics.json").read_text())["final"]
    table = format_table(teacher, student)
    assert f"{teacher['params']:,}" in table and f"{student['flops']:,}" in table
    assert f"-{student['flops_reduction']:.1f}%" in table and "mAP %" in table


def test_unknown_preset_family_is_a_clear_error(capsys):
    assert main(["--preset", "no-such-family"]) == 2
    assert "not found" in capsys.readouterr().err
