"""The shrink schedule inside real tiny CDD runs, step by step: the reset set is never ahead of the schedule and
meets the budget at the very step that reaches ``cdd.shrink_end``; a run resumed mid-schedule continues the same
curve; ``shrink_curve = "none"`` grows the reset set exactly as the code before the schedule did.

Every setting these tests depend on is given as an override, so the demo preset may change under them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tiny_training import tiny_overrides
from training.budget import FlopsBudget
from training.checkpoint import load_checkpoint
from training.config import load_config
from training.distributed import init_distributed
from training.grg import DescriptorMemory, step_reset_proposal
from training.shrink_schedule import ShrinkSchedule
from training.trainer import Trainer

EPOCHS, STEPS = 4, 3  # 12 optimizer steps; resetting starts at epoch 0.5: step 2 is its first
TOTAL = EPOCHS * STEPS
COMMON = ["run.max_steps_per_epoch=3", "run.eval_every=0", 'cdd.reset_rule="decay"', "cdd.reset_decay_steps=2",
          "cdd.grg_start_epoch=0.5", "cdd.round_to=4", "cdd.latency_budget_ms=0", "cdd.topk=2",
          "loss.distill_mixup_alpha=1.0", "loss.compat_weight=10.0"]
# linear from epoch 0.5 to 0.75 of the run: the budget is due at step 9, three steps before the end
PACED = COMMON + ["cdd.ratio=0.95", "cdd.flops_budget=0.6", 'cdd.shrink_curve="linear"', "cdd.shrink_end=0.75",
                  "cdd.fill_to_schedule=true"]
# proposals small enough that the reset set takes a few whole ones before one crosses the budget
UNPACED = COMMON + ["cdd.ratio=0.85", "cdd.flops_budget=0.6", 'cdd.shrink_curve="none"', "cdd.fill_to_schedule=false"]


def _trainer(root, out, teacher_run, extra, resume=False):
    overrides = tiny_overrides(root, out, "student", teacher_run, epochs=EPOCHS) + extra
    return Trainer(load_config("demo-student", overrides), init_distributed("cpu"), resume=resume)


def _record_updates(trainer):
    """Every call of the run's ``resetter.update``: its inputs and the reset set right after it. The real update
    runs; this only copies what it was given and what it left."""
    calls = []
    resetter = trainer.resetter
    update = resetter.update

    def recorded(teacher, student, steps_left=None, run_fraction=None):
        added = update(teacher, student, steps_left, run_fraction)
        calls.append(SimpleNamespace(teacher=[t.detach().clone() for t in teacher],
                                     student=[s.detach().clone() for s in student], steps_left=steps_left,
                                     fraction=run_fraction, masks=[m.clone() for m in resetter.masks]))
        return added

    resetter.update = recorded
    return calls


def _budget(trainer):
    c = trainer.cfg.cdd
    return FlopsBudget.for_spec(trainer.spec, trainer.teacher_cost.flops, c.flops_budget, c.round_to)


@pytest.fixture(scope="module")
def paced_run(tiny_reid_root, teacher_run, tmp_path_factory):
    """The paced tiny run, every resetter call recorded: (trainer, calls, run dir)."""
    out = tmp_path_factory.mktemp("paced") / "student"
    trainer = _trainer(tiny_reid_root, out, teacher_run, PACED)
    calls = _record_updates(trainer)
    trainer.fit()
    return trainer, calls, out


def test_every_step_stays_within_the_schedule_and_the_budget_is_met_at_the_step_of_shrink_end(paced_run):
    trainer, calls, _ = paced_run
    budget = _budget(trainer)
    schedule = ShrinkSchedule("linear", 0.5 / EPOCHS, 0.75)
    # one call per step from the start of resetting, each told its own share of the run
    assert [c.fraction for c in calls] == [i / TOTAL for i in range(2, TOTAL)]
    assert [c.steps_left for c in calls] == [TOTAL - i - 1 for i in range(2, TOTAL)]
    end = 9 - 2  # the call of step 9, the first whose fraction reaches shrink_end
    for call in calls[:end]:
        limit = schedule.allowed(budget.full_flops, budget.limit, call.fraction)
        assert limit > budget.limit
        assert budget.flops(call.masks) >= limit, f"ahead of the schedule at {call.fraction:.3f}"
        assert not budget.met(call.masks)
    # fill_to_schedule: each paced step ends within one rounding step of its limit, so the schedule binds
    step = budget.model.max_step(trainer.cfg.cdd.round_to)
    for call in calls[:end]:
        assert budget.flops(call.masks) < schedule.allowed(budget.full_flops, budget.limit, call.fraction) + step
    assert budget.met(calls[end].masks), "the budget is not met at the step that reaches shrink_end"
    assert all(torch.equal(a, b) for c in calls[end:] for a, b in zip(c.masks, calls[end].masks, strict=True))
    assert trainer.resetter.stop_note.startswith(f"reset set frozen at GRG step {end + 1} ")
    flops = [budget.flops(c.masks) for c in calls]
    assert flops == sorted(flops, reverse=True) and len(set(flops[:end + 1])) == end + 1  # shrinks every step


def test_a_run_resumed_mid_schedule_continues_the_same_curve(paced_run, tiny_reid_root, teacher_run, tmp_path):
    straight, _, straight_out = paced_run
    out = tmp_path / "resumed"
    first = _trainer(tiny_reid_root, out, teacher_run, PACED)
    assert first.fit(stop_after_epochs=2) == {}  # "killed" after the epoch-2 checkpoint, steps 0-5
    mid = load_checkpoint(out / "checkpoint.pt")
    assert mid["epoch"] == 2 and mid["grg"]["growing"] and mid["grg"]["memories"] is not None
    mid_resets = sum(int(m.sum()) for m in mid["grg"]["masks"])
    resumed = _trainer(tiny_reid_root, out, teacher_run, PACED, resume=True)
    calls = _record_updates(resumed)
    resumed.fit()
    assert [c.fraction for c in calls] == [i / TOTAL for i in range(6, TOTAL)]  # the curve from where it stopped
    assert 0 < mid_resets < sum(int(m.sum()) for m in resumed.resetter.masks)  # it kept shrinking after resume
    assert resumed.resetter.stop_note == straight.resetter.stop_note
    a, b = load_checkpoint(straight_out / "checkpoint.pt"), load_checkpoint(out / "checkpoint.pt")
    assert all(torch.equal(x, y) for x, y in zip(a["grg"]["masks"], b["grg"]["masks"], strict=True))
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert [e["pruning"] for e in straight.history] == [e["pruning"] for e in resumed.history]


def _pre_schedule_growth(widths, cdd, budget, calls):
    """The reset set after each call under the growth rule of the code before the shrink schedule existed
    (training/grg.py and training/budget.py at the parent of commit 94257fd), written out again here: the step's
    proposal is merged whole while the budget is not met with it, else its channels are admitted smallest score
    first until the budget is met; growth stops once the budget is met, or when fewer than
    ``reset_decay_steps`` steps are left."""
    memories = [DescriptorMemory(cdd.memory_size, p) for p in widths]
    masks = [torch.zeros(p, dtype=torch.bool) for p in widths]
    growing, out = True, []
    merges = {"whole": 0, "cut": 0}
    for call in calls:
        if growing and call.steps_left < cdd.reset_decay_steps:
            growing = False
        elif growing:
            proposals = []
            for memory, t, s in zip(memories, call.teacher, call.student, strict=True):
                memory.push(t)
                proposals.append(step_reset_proposal(t, s, memory.contents(), cdd.topk, cdd.ratio))
            merged = [m | p for m, (p, _) in zip(masks, proposals, strict=True)]
            if not budget.met(merged):
                merges["whole"] += any(bool((n & ~m).any()) for n, m in zip(merged, masks, strict=True))
                masks = merged
            else:
                candidates = sorted((float(score[c]), b, c) for b, (m, (p, score)) in
                                    enumerate(zip(masks, proposals, strict=True))
                                    for c in (p & ~m).nonzero().flatten().tolist())
                masks = [m.clone() for m in masks]
                for _, b, c in candidates:
                    if budget.met(masks):
                        break
                    masks[b][c] = True
                merges["cut"] += any(bool((n & ~m).any()) for n, m in zip(merged, masks, strict=True))
            growing = not budget.met(masks)
        out.append(masks)
    return out, merges


def test_unpaced_growth_in_a_real_run_is_the_growth_before_the_schedule_bit_for_bit(tiny_reid_root, teacher_run,
                                                                                      tmp_path):
    trainer = _trainer(tiny_reid_root, tmp_path / "none", teacher_run, UNPACED)
    assert trainer.resetter.schedule is None
    calls = _record_updates(trainer)
    trainer.fit()
    budget = _budget(trainer)
    expected, merges = _pre_schedule_growth([p for _, p in trainer.spec.blocks()], trainer.cfg.cdd, budget, calls)
    assert len(calls) == TOTAL - 2
    for step, (call, masks) in enumerate(zip(calls, expected, strict=True), start=2):
        assert all(torch.equal(a, b) for a, b in zip(call.masks, masks, strict=True)), f"step {step}"
    # both ways of growing happened: proposals merged whole, then one cut short where it crossed the budget
    assert merges["whole"] >= 2 and merges["cut"] == 1
    assert budget.met(expected[-1]) and sum(int(m.sum()) for m in expected[-1]) > 0
