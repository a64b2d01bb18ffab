"""The collapse check: each evaluation after resetting starts against the best before it (teacher first)."""

from training.collapse_check import lowest_eval_ratio, running_statistics_history


def _history(maps):
    return [{"epoch": e, "eval": {"mAP": m}} if m is not None else {"epoch": e} for e, m in maps]


def test_lowest_ratio_is_against_the_best_before_including_the_teacher():
    history = _history([(1, 40.0), (2, None), (3, 45.0), (4, 20.0), (5, 44.0)])
    check = lowest_eval_ratio(history, grg_start_epoch=2, teacher_map=50.0, final=(6, 49.0))
    # after resetting (epoch > 2): 45/50, 20/50, 44/50, 49/50 -> lowest 0.4 at epoch 4
    assert check == {"evaluations_after_reset_start": 4, "lowest_ratio": 0.4, "at_epoch": 4}


def test_best_before_rises_with_the_students_own_evaluations():
    history = _history([(1, 60.0), (3, 55.0)])
    check = lowest_eval_ratio(history, grg_start_epoch=2, teacher_map=50.0)
    assert check["lowest_ratio"] == round(55 / 60, 4) and check["at_epoch"] == 3


def test_no_evaluation_after_the_start_gives_no_ratio():
    check = lowest_eval_ratio(_history([(1, 40.0)]), grg_start_epoch=2, teacher_map=None)
    assert check == {"evaluations_after_reset_start": 0, "lowest_ratio": None, "at_epoch": None}


def test_the_evaluation_at_the_end_of_the_start_epoch_comes_before_resetting():
    """Resetting starts at run progress ``grg_start_epoch``: the evaluation at the end of that epoch precedes its
    first step, so it counts as a "best before", not as an evaluation after the start."""
    check = lowest_eval_ratio(_history([(2, 60.0), (3, 30.0)]), grg_start_epoch=2, teacher_map=50.0)
    assert check == {"evaluations_after_reset_start": 1, "lowest_ratio": 0.5, "at_epoch": 3}


def test_the_running_statistics_history_reads_each_evaluations_running_result():
    history = [{"epoch": 2, "eval": {"mAP": 52.0, "running_stats": {"mAP": 50.0, "rank1": 70.0}}},
               {"epoch": 3, "loss": {"total": 1.0}},
               {"epoch": 4, "eval": {"mAP": 48.0, "running_stats": {"mAP": 35.0, "rank1": 60.0}}}]
    running = running_statistics_history(history)
    assert [h.get("eval") for h in running] == [{"mAP": 50.0}, None, {"mAP": 35.0}]
    assert running[1] == history[1]
    check = lowest_eval_ratio(running, grg_start_epoch=2, teacher_map=45.0)
    assert check == {"evaluations_after_reset_start": 1, "lowest_ratio": 0.7, "at_epoch": 4}
    assert lowest_eval_ratio(history, grg_start_epoch=2, teacher_map=45.0)["lowest_ratio"] == round(48 / 52, 4)
    assert running_statistics_history(_history([(2, 40.0)])) is None
