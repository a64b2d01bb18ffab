"""The shrink schedule: the reset set never runs ahead of it, reaches the budget exactly at its end, and
"none" is the unpaced growth (tests/training/test_shrink_schedule_run.py checks all three inside real tiny runs;
tests/training/test_resetting_plan.py the run-length checks)."""

import pytest
import torch

from tiny_training import fit_tiny_student
from training.arch_spec import ArchSpec
from training.budget import Budgets, FlopsBudget, fill_budgets
from training.config import ConfigError, load_config
from training.cost import FlopsModel
from training.grg import GradientResetter
from training.latency_budget import LatencyBudget
from training.latency_table import BlockLatency, LatencyTable
from training.shrink_schedule import ShrinkSchedule

SPEC = ArchSpec(depth=18, width=0.25, input_size=(64, 32), indicators=True)
WIDTHS = [p for _, p in SPEC.blocks()]


def test_cubic_and_linear_curves_start_full_and_end_exactly_at_the_budget():
    cubic, linear = ShrinkSchedule("cubic", 0.1, 0.6), ShrinkSchedule("linear", 0.1, 0.6)
    assert cubic.progress(0.0) == 0.0 and cubic.progress(0.1) == 0.0
    assert cubic.progress(0.35) == pytest.approx(1 - 0.5 ** 3)  # halfway through the shrink phase
    assert linear.progress(0.35) == pytest.approx(0.5)
    assert cubic.progress(0.6) == 1.0 and cubic.progress(0.9) == 1.0
    assert cubic.allowed(100.0, 20.0, 0.6) == 20.0 and cubic.allowed(100.0, 20.0, 0.1) == 100.0
    values = [cubic.progress(f / 100) for f in range(101)]
    assert values == sorted(values)
    assert ShrinkSchedule("none", 0.5, 0.1).progress(0.0) == 1.0  # unpaced: the budget from the start


def test_geometric_curve_removes_the_same_share_of_what_is_left_in_every_equal_stretch():
    geometric = ShrinkSchedule("geometric", 0.1, 0.7)
    limits = [geometric.allowed(100.0, 20.0, 0.1 + 0.06 * i) for i in range(11)]
    assert limits[0] == 100.0 and limits[-1] == 20.0
    ratios = [b / a for a, b in zip(limits, limits[1:], strict=False)]
    assert ratios == pytest.approx([0.2 ** 0.1] * 10)
    linear = ShrinkSchedule("linear", 0.1, 0.7)
    last_linear = linear.allowed(100.0, 20.0, 0.7) / linear.allowed(100.0, 20.0, 0.64)
    assert last_linear < ratios[-1]  # linear's last stretch removes a larger share of what is left


def test_a_shrink_phase_that_ends_before_it_starts_is_refused():
    with pytest.raises(ValueError, match="cdd.shrink_end = 0.1"):
        ShrinkSchedule("cubic", 0.2, 0.1)
    with pytest.raises(ValueError, match="cdd.shrink_curve must be one of"):
        ShrinkSchedule("exponential", 0.0, 0.5)
    with pytest.raises(ConfigError, match="cdd.shrink_curve"):
        load_config("demo-student", ['cdd.shrink_curve="step"'])
    with pytest.raises(ConfigError, match=r"cdd.shrink_end must be a fraction of the run in \(0, 1\]"):
        load_config("demo-student", ["cdd.shrink_end=1.5"])


def test_scheduled_flops_budget_is_the_full_network_at_the_start_and_the_budget_at_the_end():
    budget = FlopsBudget.for_spec(SPEC, FlopsModel.for_spec(SPEC).flops(WIDTHS), 0.3, round_to=4)
    schedule = ShrinkSchedule("cubic", 0.0, 0.5)
    assert budget.scheduled(schedule, 0.0).limit == pytest.approx(budget.full_flops)
    assert budget.scheduled(schedule, 0.5).limit == budget.limit  # exactly, rounding of the count included
    mid = budget.scheduled(schedule, 0.25).limit
    assert mid == pytest.approx(budget.full_flops - (1 - 0.5 ** 3) * (budget.full_flops - budget.limit))


def _descriptors(generator, batch=8):
    teacher = [torch.randn(batch, p, generator=generator) for p in WIDTHS]
    student = [torch.randn(batch, p, generator=generator) for p in WIDTHS]
    return teacher, student


def _run(resetter, steps, seed=0, start=0):
    """Drive ``resetter`` for ``steps`` steps of a ``steps``-step run; returns per-step (fraction, masks)."""
    generator = torch.Generator().manual_seed(seed)
    trace = []
    for index in range(steps):
        teacher, student = _descriptors(generator)
        if index < start:
            continue
        fraction = index / steps
        resetter.update(teacher, student, steps_left=steps - index - 1, run_fraction=fraction)
        trace.append((fraction, [m.clone() for m in resetter.masks]))
    return trace


def _resetter(curve, budget, start=0.1, end=0.6, rule="reference"):
    schedule = ShrinkSchedule(curve, start, end)
    return GradientResetter(WIDTHS, 64, 2, 0.99, budget=budget, rule=rule, schedule=schedule)


@pytest.mark.parametrize("curve", ["cubic", "linear", "geometric"])
@pytest.mark.parametrize("round_to", [1, 4])
def test_reset_set_never_exceeds_the_schedule_and_meets_the_budget_at_its_end(curve, round_to):
    teacher_flops = FlopsModel.for_spec(SPEC).flops(WIDTHS)
    budget = FlopsBudget.for_spec(SPEC, teacher_flops, 0.3, round_to=round_to)
    schedule = ShrinkSchedule(curve, 0.1, 0.6)
    trace = _run(_resetter(curve, budget), 100)
    assert [f for f, _ in trace] == [i / 100 for i in range(100)]
    for fraction, masks in trace[:60]:  # every step before shrink_end
        assert schedule.progress(fraction) < 1
        assert budget.flops(masks) >= schedule.allowed(budget.full_flops, budget.limit, fraction)  # never ahead
        assert not budget.met(masks)
    assert trace[60][0] == 0.6 and budget.met(trace[60][1])  # the first step at shrink_end meets the budget
    flops = [budget.flops(m) for _, m in trace]
    assert flops == sorted(flops, reverse=True)
    # gradual: at a quarter of the shrink phase the network is still well above the budget, below full
    quarter = next(m for f, m in trace if f >= 0.225)
    assert budget.limit < budget.flops(quarter) < teacher_flops


def test_a_latency_budget_is_paced_by_the_schedule_as_the_flops_budget_is():
    """A hand-made table (the pacing under test, not a measurement): 1 ms per kept channel in every block."""
    blocks = tuple(BlockLatency(name, p, (1, p), (1.0, float(p)), (1.0, float(p))) for name, p in SPEC.blocks())
    table = LatencyTable({"runtime": "onnxruntime-cpu", "batch": 1, "threads": 1}, {"stem": 1.0, "head": 1.0}, blocks)
    latency = LatencyBudget.for_table(table, 0.4 * table.full_ms(), round_to=4)
    schedule = ShrinkSchedule("linear", 0.1, 0.6)
    trace = _run(GradientResetter(WIDTHS, 64, 2, 0.99, budget=Budgets((latency,)), rule="reference",
                                  schedule=schedule), 100)
    for fraction, masks in trace[:60]:
        limit = schedule.allowed(table.full_ms(), latency.limit_ms, fraction)
        assert limit <= latency.estimate_ms(masks)  # never ahead
        assert latency.estimate_ms(masks) < limit + 4.0  # nor behind: within one rounding step (4 channels)
        assert latency.estimate_ms(masks) > latency.limit_ms
    assert latency.estimate_ms(trace[60][1]) <= latency.limit_ms  # met at shrink_end


def test_unpaced_growth_is_the_budget_alone():
    """'none' grows exactly as a resetter without schedule (today's behaviour): whole proposals admitted
    until the budget is crossed, within a few steps."""
    budget = FlopsBudget.for_spec(SPEC, FlopsModel.for_spec(SPEC).flops(WIDTHS), 0.25)
    paced_none = _run(_resetter("none", budget), 30)
    plain = GradientResetter(WIDTHS, 64, 2, 0.99, budget=budget, rule="reference")
    generator = torch.Generator().manual_seed(0)
    for _, masks in paced_none:
        plain.update(*_descriptors(generator))
        assert all(torch.equal(a, b) for a, b in zip(masks, plain.masks, strict=True))
    assert budget.met(paced_none[5][1])  # cut to the budget within a few steps, unlike the schedule


def test_resuming_mid_schedule_continues_the_same_curve():
    budget = FlopsBudget.for_spec(SPEC, FlopsModel.for_spec(SPEC).flops(WIDTHS), 0.25)
    whole = _run(_resetter("cubic", budget), 60)
    first = _resetter("cubic", budget)  # the first 25 steps, then stopped
    generator = torch.Generator().manual_seed(0)
    for index in range(25):
        first.update(*_descriptors(generator), steps_left=60 - index - 1, run_fraction=index / 60)
    stopped = sum(int(m.sum()) for m in first.masks)
    assert first.growing and 0 < stopped < sum(int(m.sum()) for m in whole[-1][1])  # mid-schedule, still shrinking
    resumed = _resetter("cubic", budget)
    resumed.load_state_dict(first.state_dict())
    rest = _run(resumed, 60, start=25)
    assert len(rest) == 35
    for (fraction, masks), (fraction2, masks2) in zip(whole[25:], rest, strict=True):
        assert fraction == fraction2
        assert all(torch.equal(a, b) for a, b in zip(masks, masks2, strict=True))


def test_intermediate_limits_stop_one_channel_short_and_the_final_limit_crosses():
    budget = FlopsBudget.for_spec(SPEC, FlopsModel.for_spec(SPEC).flops(WIDTHS), 0.5)
    masks = [torch.zeros(p, dtype=torch.bool) for p in WIDTHS]
    proposal = [torch.ones(p, dtype=torch.bool) for p in WIDTHS]
    scores = [torch.arange(p, dtype=torch.float32) for p in WIDTHS]
    short = fill_budgets((budget,), masks, proposal, scores, cross=False)
    crossed = fill_budgets((budget,), masks, proposal, scores, cross=True)
    assert not budget.met(short) and budget.met(crossed)
    assert sum(int(m.sum()) for m in crossed) == sum(int(m.sum()) for m in short) + 1


def test_a_real_run_records_the_schedule_and_shrinks_no_faster(tiny_reid_root, teacher_run, tmp_path):
    extra = ["cdd.flops_budget=0.6", "cdd.round_to=1", "cdd.ratio=0.95", 'cdd.shrink_curve="cubic"',
             "cdd.shrink_end=0.5", "run.eval_every=1", "cdd.fill_to_schedule=true", 'cdd.reset_rule="decay"',
             "cdd.reset_decay_steps=3", "cdd.latency_budget_ms=0"]
    trainer, final = fit_tiny_student(tiny_reid_root, tmp_path / "paced", teacher_run, 4, extra)
    epochs = trainer.history
    scheduled = [e["pruning"]["scheduled_flops_fraction"] for e in epochs]
    kept = [e["pruning"]["flops_fraction"] for e in epochs]
    assert scheduled[0] < 1 and scheduled[1:] == [0.6, 0.6, 0.6]  # ends of epochs 1-4; shrink ends at epoch 2
    assert kept[0] >= scheduled[0]  # not ahead of the schedule while it still falls
    assert kept[-1] <= 0.6 and final["compression"]["met"]
    check = final["compression"]["collapse_check"]
    assert check["evaluations_after_reset_start"] == 4
    # the lowest ratio, recomputed here from the run's own evaluations (the teacher's mAP counting first)
    best = next(e["eval"]["teacher"]["mAP"] for e in epochs if e.get("eval"))
    ratios = []
    for epoch, value in [(e["epoch"], e["eval"]["mAP"]) for e in epochs if e.get("eval")] + [(4, final["mAP"])]:
        if epoch > trainer.cfg.cdd.grg_start_epoch:
            ratios.append((value / best, epoch))
        best = max(best, value)
    assert len(ratios) == 4 and (check["lowest_ratio"], check["at_epoch"]) == (round(min(ratios)[0], 4), min(ratios)[1])
    # the pace, recomputed from the per-epoch FLOPs: the largest one-epoch cut and the epoch of the final size
    cuts = [(round(100 * (before - after), 2), epoch)
            for epoch, before, after in zip(range(1, 5), [1.0] + kept[:-1], kept, strict=True)]
    pace = final["compression"]["shrink_pace"]
    assert (pace["largest_epoch_cut"], pace["at_epoch"]) == max(cuts, key=lambda c: c[0]) and pace["at_epoch"] >= 1
    assert pace["final_size_epoch"] == 1 + kept.index(kept[-1]) and pace["final_size_run_fraction"] == round(
        pace["final_size_epoch"] / 4, 3)


def test_fill_to_schedule_keeps_the_curve_when_proposals_run_dry():
    """ratio 0.05 proposes nothing (no channel is in every pair's bottom 5%): without filling the reset set
    never grows; with it the network follows the schedule exactly and meets the budget at its end."""
    teacher_flops = FlopsModel.for_spec(SPEC).flops(WIDTHS)
    budget = FlopsBudget.for_spec(SPEC, teacher_flops, 0.3)
    schedule = ShrinkSchedule("linear", 0.1, 0.6)

    def resetter(fill):
        return GradientResetter(WIDTHS, 64, 2, 0.05, budget=budget, rule="reference", schedule=schedule,
                                fill_to_schedule=fill)

    assert all(int(m.sum()) == 0 for _, masks in _run(resetter(False), 50) for m in masks)
    filled = _run(resetter(True), 50)
    for fraction, masks in filled:
        limit = schedule.allowed(budget.full_flops, budget.limit, fraction)
        if fraction < 0.6:
            assert limit <= budget.flops(masks)  # never ahead of the schedule
            if fraction >= 0.2:
                assert budget.flops(masks) < limit + FlopsModel.for_spec(SPEC).max_step()  # and not behind it
        else:
            assert budget.met(masks)
