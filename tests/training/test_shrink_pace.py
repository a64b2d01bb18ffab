import pytest

from training.results.tables import student_runs_table
from training.shrink_pace import shrink_pace


def _history(fractions):
    return [{"epoch": i + 1, "pruning": {"flops_fraction": f}} for i, f in enumerate(fractions)]


def test_a_one_step_cut_shows_as_one_large_cut_early():
    pace = shrink_pace(_history([1.0, 1.0, 0.23, 0.23, 0.23, 0.23, 0.23, 0.23, 0.23, 0.23]), 10)
    assert pace == {"largest_epoch_cut": 77.0, "at_epoch": 3, "final_size_epoch": 3, "final_size_run_fraction": 0.3}


def test_a_gradual_shrink_shows_its_largest_step_and_a_late_final_size():
    pace = shrink_pace(_history([0.9, 0.8, 0.65, 0.55, 0.5, 0.5, 0.5, 0.5]), 8)
    assert pace == {"largest_epoch_cut": 15.0, "at_epoch": 3, "final_size_epoch": 5, "final_size_run_fraction": 0.625}


def test_the_first_epoch_counts_from_the_teachers_size_and_no_pruning_gives_none():
    assert shrink_pace(_history([0.6, 0.5]), 2)["largest_epoch_cut"] == 40.0  # 1.0 -> 0.6 in epoch 1
    assert shrink_pace([{"epoch": 1, "loss": {}}], 1) is None


def test_the_student_runs_table_shows_the_pace_recomputed_from_each_files_epochs():
    final = {"mAP": 50.0, "flops_reduction": 50.0}
    result = {"final": final, "epochs": _history([0.9, 0.8, 0.65, 0.55, 0.5, 0.5, 0.5, 0.5])}
    row = student_runs_table([result], ["docs/results/demo-student-x.json"]).splitlines()[2]
    assert row == "| `demo-student-x` | 8 | 50.0% | 50.00 |  |  | 15.0 (epoch 3) | 5 (62%) |  |"


@pytest.mark.parametrize("epochs", [0, -1])
def test_no_run_length_gives_none(epochs):
    assert shrink_pace(_history([0.5]), epochs) is None
