"""The latency budget: admission by contribution with a latency price (alone and with the FLOPs budget), and a
tiny CDD run whose exported network meets a latency budget priced by the run's table (made for the test, so
that no assertion depends on how fast or busy this machine is), written at start and reused on resume."""

import json
from dataclasses import replace

import pytest
import torch

from tiny_training import tiny_overrides
from training import latency_measure
from training.arch_spec import ArchSpec
from training.budget import Budgets, FlopsBudget, rounded_kept
from training.config import CDDConfig, load_config
from training.cost import deployed_cost
from training.distributed import init_distributed
from training.grg import GradientResetter, step_reset_proposal
from training.latency_budget import LatencyBudget, latency_report, warn_if_latency_missed
from training.latency_measure import kept_grid, latency_key
from training.latency_table import LATENCY_TABLE_FILE, BlockLatency, LatencyTable, LatencyTableError
from training.trainer import Trainer

SPEC_BLOCKS = ArchSpec(depth=18, width=0.125).blocks()
SMALL = ArchSpec(depth=18, width=1 / 16, embedding_dim=16, input_size=(64, 32), indicators=True)


def _only_last_block_costs_time(spec):
    """A hand-made table (the admission logic under test, not a measurement): 1 ms per channel in the last
    block, nothing anywhere else."""
    blocks = tuple(BlockLatency(name, p, (1, p), (0.0, float(p - 1) if b == 7 else 0.0),
                                (0.0, float(p - 1) if b == 7 else 0.0))
                   for b, (name, p) in enumerate(spec.blocks()))
    return LatencyTable({"runtime": "onnxruntime-cpu", "batch": 1, "threads": 1}, {"stem": 1.0, "head": 1.0}, blocks)


def test_a_block_is_priced_with_at_least_one_channel_and_rounded_up():
    """What a budget prices is what the export keeps: never an empty block, widths rounded up to round_to."""
    assert [rounded_kept(8, reset, 1) for reset in (0, 3, 7, 8)] == [8, 5, 1, 1]
    assert [rounded_kept(8, reset, 4) for reset in (0, 3, 5, 8)] == [8, 8, 4, 4]
    assert rounded_kept(6, 6, 4) == 4 and rounded_kept(3, 3, 4) == 3  # capped at the block's width
    table = _only_last_block_costs_time(SMALL)
    widths = [p for _, p in SMALL.blocks()]
    budget = LatencyBudget.for_table(table, 100.0, round_to=4)
    assert budget.kept(widths) == [4] * 8  # every channel reset: each block still exports 4
    assert table.estimate_ms(budget.kept(widths)) == 2.0 + 3.0  # the last block's 4 channels cost 3 ms, not 0


def test_both_budgets_growth_continues_until_the_latency_budget_is_met_too():
    widths = [p for _, p in SMALL.blocks()]  # 4,4,8,8,16,16,32,32
    flops = FlopsBudget.for_spec(SMALL, deployed_cost(SMALL).flops, 0.95)
    latency = LatencyBudget.for_table(_only_last_block_costs_time(SMALL), 2.0 + 20.0)  # last block <= 21 kept
    empty = [torch.zeros(p, dtype=torch.bool) for p in widths]
    proposal = [torch.ones(p, dtype=torch.bool) for p in widths]
    scores = [torch.arange(p, dtype=torch.float32) + 100 * b for b, p in enumerate(widths)]  # last block last
    only_flops = flops.fill(empty, proposal, scores)
    assert flops.met(only_flops) and not bool(only_flops[7].any())  # FLOPs alone: met before block 7
    both = Budgets((flops, latency))
    grown = both.fill(empty, proposal, scores)
    assert both.met(grown) and latency.estimate_ms(grown) == 22.0  # 11 of block 7's 32 channels, not more
    assert int(grown[7].sum()) == 11 and grown[7][:11].all()  # smallest contributions first
    assert all(bool(g.all()) for g in grown[:7])  # every cheaper-scored channel admitted before them
    note = both.describe(grown)
    assert "FLOPs budget met" in note and "latency budget met: exported network estimated 22.000 ms" in note


def test_latency_budget_alone_stops_growth_and_says_so():
    widths = [p for _, p in SMALL.blocks()]
    latency = LatencyBudget.for_table(_only_last_block_costs_time(SMALL), 12.0, round_to=4)
    resetter = GradientResetter(widths, memory_size=8, topk=1, ratio=0.99, budget=Budgets((latency,)))
    generator = torch.Generator().manual_seed(0)
    teacher = [torch.rand(1, p, generator=generator) for p in widths]
    student = [torch.rand(1, p, generator=generator) for p in widths]
    assert resetter.update(teacher, student) > 0 and not resetter.growing
    # estimate = 2 + (kept in the last block - 1), kept rounded up to 4: 24 of its 32 channels reset keep 8 (9 ms),
    # 21 to 23 keep 12 (13 ms); the whole proposal (31 of 32) would keep 4 (5 ms)
    assert int(resetter.masks[7].sum()) == 24 and latency.estimate_ms(resetter.masks) == 9.0
    # minimal: un-resetting the last admitted channel (the highest score) is over the budget again
    scores = [step_reset_proposal(t, s, t, 1, 0.99)[1] for t, s in zip(teacher, student, strict=True)]
    _, b, c = max((float(score[c]), b, c) for b, (m, score) in enumerate(zip(resetter.masks, scores, strict=True))
                  for c in m.nonzero().flatten().tolist())
    fewer = [m.clone() for m in resetter.masks]
    fewer[b][c] = False
    assert latency.estimate_ms(fewer) == 13.0
    assert "latency budget met" in resetter.stop_note and "FLOPs" not in resetter.stop_note


def test_a_latency_budget_is_missed_when_over_or_when_below_and_no_flops_budget_bound(caplog):
    table = _only_last_block_costs_time(SMALL)  # estimate = 2 + (kept in the last block - 1); step 4 ms
    widths = [p for _, p in SMALL.blocks()]
    at = latency_report(table, widths[:7] + [20], 21.0, round_to=4)  # 21 ms
    assert at["latency_met"] and at["latency_within_one_rounding_step"] and at["latency_rounding_step_ms"] == 4.0
    assert not warn_if_latency_missed(at, None, "")
    over = latency_report(table, widths, 21.0, round_to=4)  # 33 ms
    assert warn_if_latency_missed(over, False, "") and "latency budget MISSED" in caplog.text
    below = latency_report(table, widths[:7] + [4], 21.0, round_to=4)  # 5 ms
    assert warn_if_latency_missed(below, None, "") and warn_if_latency_missed(below, True, "")
    assert not warn_if_latency_missed(below, False, "")  # the FLOPs budget bound the network: not a miss


def _table_made_for(spec: ArchSpec, cdd: CDDConfig) -> LatencyTable:
    """A latency table of ``spec`` made for the test, not measured: every block costs 0.01 ms per kept channel
    times its position (1 for layer1.0 ... 8 for layer4.1) at the widths a measurement would use, plus a fixed
    1.5 ms. What the trainer does with a table is under test here; measuring one is test_latency_table's."""
    blocks = tuple(BlockLatency(name, p, tuple(grid), ms, ms)
                   for b, (name, p) in enumerate(spec.blocks())
                   for grid in [kept_grid(p, cdd.round_to)]
                   for ms in [tuple(0.01 * (b + 1) * k for k in grid)])
    table = LatencyTable(latency_key(spec, cdd), {"stem": 1.0, "head": 0.5}, blocks, {"cpu": "made for the test"},
                         "made for the test")
    return replace(table, whole_network={"measured_ms": table.full_ms(), "estimated_ms": table.full_ms()},
                   measurement={"seconds": 0.0, "measured_at": "made for the test"})


@pytest.fixture(scope="module")
def latency_run(tiny_reid_root, teacher_run, tmp_path_factory):
    """A tiny CDD run with a latency budget 60% of the way from the floor to the full width of a table made
    for the test (the trainer's measurement is replaced by it: the budget and the table the run prices with
    are the same numbers on any machine), killed after epoch 1 and resumed: (trainer, final, out, budget,
    table bytes after epoch 1, spec+settings of every table the trainer asked for)."""
    out = tmp_path_factory.mktemp("latency") / "student"
    settings = ["cdd.round_to=4", "cdd.latency_batch=8", "cdd.ratio=0.95", "run.eval_every=0"]
    spec = ArchSpec(depth=18, width=0.125, embedding_dim=32, input_size=(64, 32))
    made = _table_made_for(spec, CDDConfig(round_to=4, latency_batch=8))
    budget = round(made.floor_ms() + 0.6 * (made.full_ms() - made.floor_ms()), 4)
    overrides = tiny_overrides(tiny_reid_root, out, "student", teacher_run, epochs=2) + settings
    overrides.append(f"cdd.latency_budget_ms={budget}")
    cfg = load_config("demo-teacher", overrides)
    asked = []

    def table_for(run_spec, cdd, *args, **kwargs):
        asked.append((run_spec.blocks(), cdd.latency_batch))
        return _table_made_for(run_spec, cdd)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(latency_measure, "measure_latency_table", table_for)
        Trainer(cfg, init_distributed("cpu")).fit(stop_after_epochs=1)
        measured = (out / LATENCY_TABLE_FILE).read_bytes()
        trainer = Trainer(cfg, init_distributed("cpu"), resume=True)
        return trainer, trainer.fit(), out, budget, measured, asked


def test_run_meets_its_latency_budget_with_rounding_and_resets_channels(latency_run):
    trainer, final, out, budget, _, _ = latency_run
    report = final["compression"]
    assert report["reset_channels"] > 0 and "latency budget met" in report["growth"]
    assert report["estimated_latency_ms"] <= budget < report["full_width_estimated_latency_ms"]
    assert report["latency_met"] and report["latency_within_one_rounding_step"]
    spec = ArchSpec.load(out / "arch.json")
    assert all(k % 4 == 0 or k == p for k, (_, p) in zip(spec.kept_counts(), spec.blocks(), strict=True))
    assert spec.kept_counts() != [p for _, p in spec.blocks()]


def test_exported_networks_table_estimate_is_what_the_budget_reported(latency_run):
    trainer, final, out, _, _, _ = latency_run
    table = LatencyTable.load(out / LATENCY_TABLE_FILE)
    exported = table.estimate_ms(ArchSpec.load(out / "arch.json").kept_counts())
    assert final["compression"]["estimated_latency_ms"] == round(exported, 4)
    (latency,) = trainer.resetter.budget.budgets
    assert latency.estimate_ms(trainer.resetter.masks) == pytest.approx(exported, abs=1e-9)
    assert f"estimated {exported:.3f} ms" in trainer.resetter.stop_note


def test_resume_reuses_the_table_and_refuses_other_latency_settings(latency_run, tiny_reid_root, teacher_run):
    trainer, _, out, budget, measured, asked = latency_run
    assert asked == [(SPEC_BLOCKS, 8)]  # one table, for the run's network, at start; not measured again on resume
    assert (out / LATENCY_TABLE_FILE).read_bytes() == measured
    assert trainer.latency_table == LatencyTable.from_dict(json.loads(measured))
    overrides = tiny_overrides(tiny_reid_root, out, "student", teacher_run, epochs=2)
    overrides += ["cdd.round_to=4", "cdd.latency_batch=16", f"cdd.latency_budget_ms={budget}"]
    with pytest.raises(LatencyTableError, match=r"measured for batch = 8, this run has 16"):
        Trainer(load_config("demo-teacher", overrides), init_distributed("cpu"), resume=True)
