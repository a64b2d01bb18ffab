"""Resetting settings checked against the run's length at start (training/resetting_plan.py): a run whose
gradient resetting could never start, or whose last reset rows could not reach zero in time for the budget, is
refused before its first step, naming the setting and a value that works; and the check accepts exactly the runs
whose resetter meets its budget.

The demo student's resetting settings are given as overrides, so the demo preset may change under these tests."""

import re

import pytest
import torch

from tiny_training import tiny_overrides
from training.__main__ import main
from training.arch_spec import ArchSpec
from training.budget import FlopsBudget
from training.config import ConfigError, load_config
from training.cost import FlopsModel
from training.grg import GradientResetter
from training.resetting_plan import check_resetting_plan, first_step_at
from training.shrink_schedule import ShrinkSchedule

DEMO = ["cdd.grg_start_epoch=2", 'cdd.shrink_curve="geometric"', "cdd.shrink_end=0.5", 'cdd.reset_rule="decay"',
        "cdd.reset_decay_steps=10", "cdd.flops_budget=0.2", "cdd.latency_budget_ms=0"]
SUGGESTION = re.compile(r"set (cdd\.\w+) (?:=|to about|to at most) ([0-9]+(?:\.[0-9]+)?)")


def _cdd(overrides):
    return load_config("demo-student", DEMO + overrides).cdd


def _follow_suggestions(overrides, epochs, steps_per_epoch):
    """Check the plan; while it is refused, apply the setting and value the refusal names (each refusal must name
    one). Returns the refusals' messages and their (setting, value) in order; the last settings are accepted."""
    refusals = []
    for _ in range(4):
        try:
            check_resetting_plan(_cdd(overrides), epochs, steps_per_epoch, budgeted=True)
            return refusals
        except ConfigError as refusal:
            found = SUGGESTION.search(str(refusal))
            assert found, f"no working value named in: {refusal}"
            refusals.append((str(refusal), found.groups()))
            overrides = [*overrides, f"{found[1]}={found[2]}"]
    raise AssertionError(f"still refused after following {[s for _, s in refusals]}")


def test_the_demo_settings_fit_the_demo_run():
    assert _follow_suggestions([], 30, 29) == []


def test_a_demo_capped_at_3_epochs_is_refused_until_the_named_values_are_set():
    """The new user's run of the issue: 3 epochs with resetting from epoch 3 and a 60-step decay."""
    refusals = _follow_suggestions(["cdd.grg_start_epoch=3", "cdd.reset_decay_steps=60"], 3, 29)
    assert [s for _, s in refusals] == [("cdd.grg_start_epoch", "0.3"), ("cdd.reset_decay_steps", "21")]
    assert "cdd.grg_start_epoch = 3 is not before the end of the run (run.epochs = 3)" in refusals[0][0]
    # 87 steps; the schedule reaches the budget at step 44 (0.5 of the run), 42 steps follow it
    assert "cdd.reset_decay_steps = 60 is longer than the 42 step(s) left after" in refusals[1][0]


@pytest.mark.parametrize(("overrides", "epochs", "steps", "message", "fixes"), [
    (["cdd.shrink_end=0.6"], 3, 29, "cdd.shrink_end = 0.6 of the run is not after resetting starts",
     [("cdd.grg_start_epoch", "0.3")]),
    # 116 steps; 0.7 of them is step 81.2: the schedule reaches the budget at step 82, 33 steps follow it
    (["cdd.shrink_end=0.7", "cdd.reset_decay_steps=60"], 4, 29, "is longer than the 33 step(s) left",
     [("cdd.reset_decay_steps", "16")]),
    # the schedule never reaches its end within the run: no decay fits, the end must move
    (["cdd.shrink_end=1.0", "cdd.reset_decay_steps=2"], 20, 29, "is longer than the -1 step(s) left",
     [("cdd.shrink_end", "0.99")]),
    (['cdd.shrink_curve="none"', "cdd.reset_decay_steps=60"], 3, 10,
     "is not shorter than the 10 step(s) from the start of resetting", [("cdd.reset_decay_steps", "3")]),
])
def test_each_refusal_names_the_setting_and_a_value_that_is_then_accepted(overrides, epochs, steps, message, fixes):
    refusals = _follow_suggestions(overrides, epochs, steps)
    assert message in refusals[0][0] and [s for _, s in refusals] == fixes


def test_the_first_step_at_a_run_fraction_is_exact_where_the_product_rounds():
    assert first_step_at(0.7, 10) == 7  # 0.7 * 10 is 7.000000000000001 in floating point
    assert first_step_at(0.75, 12) == 9 and first_step_at(0.7, 116) == 82 and first_step_at(1.0, 12) == 12
    assert all(i / n >= f > (i - 1) / n for n in (3, 10, 29, 87) for f in (0.1, 0.3, 0.5, 0.7, 0.9)
               for i in [first_step_at(f, n)])


SPEC = ArchSpec(depth=18, width=0.25, input_size=(64, 32), indicators=True)
WIDTHS = [p for _, p in SPEC.blocks()]


def _resetter_meets_budget(curve, decay_steps, epochs=4, steps_per_epoch=3):
    """Drive a decay-rule resetter (resetting from epoch 0.5, shrink end 0.75) through every step of the run:
    is its budget met at the end?"""
    budget = FlopsBudget.for_spec(SPEC, FlopsModel.for_spec(SPEC).flops(WIDTHS), 0.6)
    resetter = GradientResetter(WIDTHS, 64, 2, 0.99, budget=budget, rule="decay", decay_steps=decay_steps,
                                schedule=ShrinkSchedule(curve, 0.5 / epochs, 0.75), fill_to_schedule=True)
    generator = torch.Generator().manual_seed(0)
    total = epochs * steps_per_epoch
    for index in range(2, total):  # resetting starts at step 2 (epoch 0.5 of 3 steps)
        teacher = [torch.randn(8, p, generator=generator) for p in WIDTHS]
        student = [torch.randn(8, p, generator=generator) for p in WIDTHS]
        resetter.update(teacher, student, steps_left=total - index - 1, run_fraction=index / total)
    return budget.met(resetter.masks)


@pytest.mark.parametrize(("curve", "decay_steps", "fits"), [
    ("linear", 2, True), ("linear", 3, False),  # 12 steps: the budget is due at step 9, two steps follow it
    ("none", 9, True), ("none", 10, False),  # resetting starts at step 2, nine steps follow it
])
def test_the_check_accepts_exactly_the_runs_whose_resetter_meets_its_budget(curve, decay_steps, fits):
    cdd = _cdd(["cdd.grg_start_epoch=0.5", f'cdd.shrink_curve="{curve}"', "cdd.shrink_end=0.75",
                f"cdd.reset_decay_steps={decay_steps}"])
    if fits:
        check_resetting_plan(cdd, 4, 3, budgeted=True)
    else:
        with pytest.raises(ConfigError, match=f"cdd.reset_decay_steps = {decay_steps} is"):
            check_resetting_plan(cdd, 4, 3, budgeted=True)
    assert _resetter_meets_budget(curve, decay_steps) is fits


def test_a_flops_budget_below_the_smallest_exportable_network_is_refused_with_one_it_can_reach():
    teacher_flops = FlopsModel.for_spec(SPEC).flops(WIDTHS)
    everything = [torch.ones(p, dtype=torch.bool) for p in WIDTHS]  # every channel reset
    # with round_to 4 every block exports at least 4 channels: 22.7% of the teacher's FLOPs
    with pytest.raises(ValueError, match=r"cdd.flops_budget = 0.2 is below the smallest network this student can "
                                         r"export: 1,985,536 MACs = 22.7% .* at least 0.228 or lower cdd.round_to"):
        FlopsBudget.for_spec(SPEC, teacher_flops, 0.2, round_to=4)
    assert FlopsBudget.for_spec(SPEC, teacher_flops, 0.228, round_to=4).met(everything)
    with pytest.raises(ValueError, match=r"each block keeps at least 8 channel\(s\) with cdd.round_to = 8"):
        FlopsBudget.for_spec(SPEC, teacher_flops, 0.228, round_to=8)
    assert FlopsBudget.for_spec(SPEC, teacher_flops, 0.2, round_to=1).met(everything)  # reachable without rounding


def test_cdd_train_refuses_a_run_too_short_for_its_resetting_before_its_first_step(tiny_reid_root, teacher_run,
                                                                                   tmp_path, capsys):
    out = tmp_path / "student"
    overrides = tiny_overrides(tiny_reid_root, out, "student", teacher_run, epochs=3) + [
        "run.max_steps_per_epoch=3", "cdd.grg_start_epoch=3", "cdd.flops_budget=0.6", "cdd.latency_budget_ms=0"]
    assert main(["--preset", "demo-student", *[a for o in overrides for a in ("--set", o)]]) == 2
    err = capsys.readouterr().err
    assert "cdd.grg_start_epoch = 3 is not before the end of the run (run.epochs = 3)" in err
    assert "set cdd.grg_start_epoch to about 0.3" in err
    assert not (out / "checkpoint.pt").exists() and not (out / "metrics.json").exists()


@pytest.mark.parametrize("preset", ["demo-student", "paper-student-budgeted"])
def test_every_shipped_budgeted_preset_can_meet_its_flops_budget(preset):
    cfg = load_config(preset)
    m, d = cfg.model, cfg.data
    spec = ArchSpec(depth=m.depth, width=m.width, last_stride=m.last_stride, embedding_dim=m.embedding_dim,
                    input_size=(d.height, d.width), indicators=True)
    widths = [p for _, p in spec.blocks()]
    teacher_flops = FlopsModel.for_spec(spec).flops(widths)  # the student starts as its teacher
    budget = FlopsBudget.for_spec(spec, teacher_flops, cfg.cdd.flops_budget, cfg.cdd.round_to)
    assert budget.met([torch.ones(p, dtype=torch.bool) for p in widths])  # every channel reset meets it
    assert not budget.met([torch.zeros(p, dtype=torch.bool) for p in widths])  # the full network does not
