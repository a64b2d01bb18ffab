"""Which results files each table NAME is rendered from, and how; the stamp lines under every table.

NAMEs: ``demo`` (teacher, CDD student and refined student of ``make train``), ``demo-epochs`` (the student per epoch),
``demo-student-runs`` (every demo CDD-stage run kept in docs/results/, one row each), ``demo-repeats`` (the demo
pipeline's runs with the shipped presets side by side), ``demo-recomputed-bn`` (their CDD stages' final mAP as
exported and with BatchNorm statistics recomputed; ``-runs``: their collapse checks and pace),
``batchnorm-gain-<dataset>`` (the same per ablation variant and seed, from
``docs/ablation-<dataset>-recomputed-bn.json``), ``demo-repeats-shrink-0.7`` (the same with the CDD stage's preset
before), ``demo-shrink-end-pairs`` (the CDD stage at both schedules, same teacher and seed),
``shrink-end-<dataset>-<variant>`` (one ablation variant under both schedules, per seed), ``serve-quiet`` and
``serve-quiet-shared-cores`` (``cdd-bench serve`` rounds on a machine with no other jobs, before and after each
worker's engine got its share of the cores), ``serve-budget-rounds``, ``search-cost`` and ``serve-budget`` (later
quiet rounds, ``cdd-bench search-cost`` from the same window, and where cdd-serve's CPU per request goes beside
the CPU that half the bare sync server's QPS allows), ``serve-affinity`` (paired rounds with cdd-serve's workers
pinned one per core and not; ``-rounds`` and ``-budget``: the pinned rounds as above), ``demo-reset-decay``
(the demo CDD stage at several ``cdd.reset_decay_steps``), ``run-length-animal-mnist-<variant>`` (one variant
at 8 and 16 epochs, per seed),
``benchmark-targets`` (``make bench``), ``ablation-<dataset>`` and ``ablation-<dataset>-seeds`` (``make ablation``:
the summary and the per-seed comparison of ``docs/ablation-<dataset>.json``), ``ablation-<dataset>-refine`` (the same
file, the refined student minus every variant, per seed), ``epochs-<name>`` (the per-epoch table of the student run
collected as ``docs/results/<name>.json``), ``engine-<name>`` (``cdd-bench engine --out docs/engine-<name>``: student
vs teacher and int8 vs fp32), ``step-time`` (``make step-time`` and its 24,000-entry variant),
``animal-mnist-teacher-length`` (the animal-mnist teacher at the ablation's 8 epochs and at 24, per seed).
Paths are relative to the repository root.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdd_common.search_cost_table import search_cost_markdown
from training.results.ablation_tables import (
    batchnorm_gain_table,
    fold_map_table,
    fold_table,
    per_seed_table,
    summary_table,
    two_settings_table,
)
from training.results.engine_tables import engine_table
from training.results.serve_tables import serve_budget_table, serve_pairs_table, serve_rounds_table
from training.results.stamp import stamp_line
from training.results.step_time_tables import step_time_table
from training.results.tables import (
    ResultsError,
    epochs_table,
    paired_runs_table,
    recomputed_statistics_table,
    repeat_runs_table,
    student_runs_table,
    targets_table,
    teacher_student_table,
)

__all__ = ["Table", "table_for", "render_table", "NAMES_HELP"]

DEMO_TEACHER, DEMO_STUDENT = "docs/results/demo-teacher.json", "docs/results/demo-student.json"
DEMO_REFINE = "docs/results/demo-refine.json"
# Every demo CDD-stage run kept as a results file, in the order they were tried; the shipped one last.
DEMO_STUDENT_RUNS = tuple(f"docs/results/demo-student{suffix}.json" for suffix in (
    "-cubic-0.6", "-linear-0.7-no-fill", "-linear-0.7-fill-0.20", "-linear-0.7-budget-0.24",
    "-linear-0.5-fill-0.20", "-geometric-0.7-20-epochs", "-geometric-0.7-20-epochs-flat-lr",
    "-geometric-0.7-30-epochs-first-run", "-seed-1", "-geometric-0.7-fresh-clone", "-geometric-0.5-lr-flat-15",
    "-geometric-0.5-lr-flat-15-seed-1", "-all-stages-seed-1", "-geometric-0.7-all-stages-seed-1",
    "-geometric-0.5-lr-flat-10-all-stages-seed-1", "-geometric-0.6-lr-flat-18-all-stages-seed-1", ""))
# The demo CDD stage with reset rows reaching zero in 1, 3, 10 (shipped), 20 or 50 steps: on the seed-1 teacher
# (teacher and student seed 1), then 1, 3 and 10 on the shipped seed-0 teacher, then 3 and 10 on the seed-0
# teacher with student seed 1.
_DECAY_SEED_1 = "docs/results/demo-student-reset-decay-{}-all-stages-seed-1.json"
DEMO_RESET_DECAY_RUNS = (_DECAY_SEED_1.format(1), _DECAY_SEED_1.format(3),
                         "docs/results/demo-student-all-stages-seed-1.json", _DECAY_SEED_1.format(20),
                         _DECAY_SEED_1.format(50), "docs/results/demo-student-reset-decay-1.json",
                         "docs/results/demo-student-reset-decay-3.json", DEMO_STUDENT,
                         "docs/results/demo-student-reset-decay-3-seed-1.json",
                         "docs/results/demo-student-geometric-0.5-lr-flat-15-seed-1.json")
# The demo pipeline run several times with the shipped presets: (teacher, CDD stage, refine stage) per run.
# "student seed 1": the fresh clone's teacher (the same seed-0 teacher), both student stages with run.seed = 1;
# "all stages seed 1": teacher, CDD and refine stages with run.seed = 1; likewise for seed 2.
# "fresh clone, 2 threads": a later fresh clone's `make train export` at torch's default thread count (2 on this
# machine; the rows above ran single-threaded, and the thread count changes the floating-point order).
DEMO_REPEATS = ("fresh clone", "student seed 1", "all stages seed 1", "student seed 2", "all stages seed 2",
                "fresh clone, 2 threads")
_TWO_THREADS = "docs/results/demo-{}-fresh-clone-two-threads.json"
# The CDD stages are the same runs repeated once mid-run evaluations recomputed BatchNorm statistics (training
# is unchanged by it: each ends with the final mAP of its first run), so the table shows both collapse checks.
_RECOMPUTED = "docs/results/demo-student-recomputed-bn-{}.json"
DEMO_RECOMPUTED_BN = tuple(_RECOMPUTED.format(label) for label in (
    "seed-0", "seed-1", "all-stages-seed-1", "seed-2", "all-stages-seed-2")) + (_TWO_THREADS.format("student"),)
DEMO_REPEAT_FILES = (DEMO_TEACHER, DEMO_RECOMPUTED_BN[0], DEMO_REFINE,
                     DEMO_TEACHER, DEMO_RECOMPUTED_BN[1], "docs/results/demo-refine-geometric-0.5-seed-1.json",
                     "docs/results/demo-teacher-seed-1.json", DEMO_RECOMPUTED_BN[2],
                     "docs/results/demo-refine-all-stages-seed-1.json",
                     DEMO_TEACHER, DEMO_RECOMPUTED_BN[3], "docs/results/demo-refine-seed-2.json",
                     "docs/results/demo-teacher-seed-2.json", DEMO_RECOMPUTED_BN[4],
                     "docs/results/demo-refine-all-stages-seed-2.json",
                     _TWO_THREADS.format("teacher"), DEMO_RECOMPUTED_BN[5], _TWO_THREADS.format("refine"))
# The demo CDD stage with the final size at 0.7 of the run (the preset before) and at half the run (shipped), on
# the same teacher and student seed: (0.7, 0.5) per pair.
SHRINK_END_LABELS = ("shrink end 0.7", "shrink end 0.5")  # the preset before, the shipped one
DEMO_SHRINK_PAIRS = ("teacher seed 0, student seed 0", "teacher seed 0, student seed 1",
                     "teacher seed 1, student seed 1")
DEMO_SHRINK_PAIR_FILES = ("docs/results/demo-student-geometric-0.7-30-epochs-first-run.json", DEMO_STUDENT,
                          "docs/results/demo-student-seed-1.json",
                          "docs/results/demo-student-geometric-0.5-lr-flat-15-seed-1.json",
                          "docs/results/demo-student-geometric-0.7-all-stages-seed-1.json",
                          "docs/results/demo-student-all-stages-seed-1.json")
# The same, with the preset before (final size at 0.7 of the CDD stage, learning rate flat until epoch 21).
DEMO_REPEATS_0_7 = ("first run", "student seed 1", "fresh clone")
DEMO_REPEAT_FILES_0_7 = ("docs/results/demo-teacher-first-run.json", "docs/results/demo-student-geometric-0.7-30-"
                         "epochs-first-run.json", "docs/results/demo-refine-first-run.json",
                         "docs/results/demo-teacher-first-run.json", "docs/results/demo-student-seed-1.json",
                         "docs/results/demo-refine-seed-1.json", "docs/results/demo-teacher-earlier-fresh-clone.json",
                         "docs/results/demo-student-geometric-0.7-fresh-clone.json",
                         "docs/results/demo-refine-geometric-0.7-fresh-clone.json")
NAMES_HELP = ("demo, demo-epochs, demo-student-runs, demo-reset-decay, demo-repeats, demo-recomputed-bn[-runs], "
              "demo-repeats-shrink-0.7, batchnorm-gain-<dataset>, "
              "demo-shrink-end-pairs, "
              "shrink-end-<synthetic|animal-mnist>-<variant>, run-length-animal-mnist-<variant>, serve-quiet, "
              "serve-quiet-shared-cores, serve-budget-rounds, search-cost, serve-budget, serve-affinity[-rounds], "
              "serve-affinity-budget, "
              "epochs-<name>, "
              "benchmark-targets, "
              "ablation-<dataset>, ablation-<dataset>-seeds, ablation-<dataset>-refine, engine-<name>, step-time, "
              "animal-mnist-teacher-length, animal-mnist-folds[-0-3][-refine], animal-mnist-folds-map, "
              "animal-mnist-folds-study[-cdd-cubic|-cdd-ratio-0.5], refine-start-synthetic-<h0|hp>, "
              "refine-start-animal-mnist-<h0|hp|map>, animal-mnist-folds-long[-hp]")
TEACHER_LENGTH = ("docs/ablation-animal-mnist-shrink-end-0.7.json", "docs/ablation-animal-mnist-teacher-24-epochs.json")
# Every animal-mnist run (teacher and students) at the ablation's 8 epochs and at twice that, same seeds.
RUN_LENGTH = ("docs/ablation-animal-mnist.json", "docs/ablation-animal-mnist-epochs-16.json")
RUN_LENGTH_LABELS = ("8 epochs", "16 epochs")
# animal-mnist's six class folds (training.data.animal_mnist.FOLDS), every run at the ablation's 8 epochs; folds
# 0-3 first (every variant), then folds 4-5 (every variant but (c), (d) and (e+)).
FOLDS_FILES = ("docs/ablation-animal-mnist.json", "docs/ablation-animal-mnist-folds.json",
               "docs/ablation-animal-mnist-folds-4-5.json")
FOLDS = ("animal-mnist", *(f"animal-mnist-fold-{fold}" for fold in range(1, 6)))
# Two CDD study variants on the six folds, with CDD and (e) of the same seeds (make ablation-folds).
FOLDS_STUDY = ("docs/ablation-animal-mnist-folds-study.json",)
# Where the refine stage starts and in which form: (h0) the teacher's weights in CDD's training form and (hp)
# CDD's weights in the plain slim form, beside (e), (f), (g), (h) and (e+), same seeds (docs/ablation.md,
# "Where the second stage starts").
REFINE_START_SYNTHETIC = "docs/ablation-synthetic-refine-start.json"
REFINE_START_FOLDS = ("docs/ablation-animal-mnist-folds-refine-start.json",)
REFINE_START_REFERENCES = (("h0", "refine-from-teacher"), ("hp", "refine-plain"))
# (e+), prune-then-distill as long as CDD + refine, on all six folds beside (e), (h) and (hp).
FOLDS_LONG = ("docs/ablation-animal-mnist-folds-long.json",)
STEP_TIME = ("docs/step_time.json", "docs/step_time_memory24000.json")
SERVE_QUIET = tuple(f"docs/serve-quiet/round-{i}.json" for i in (1, 2, 3))
# The same rounds after each worker's engine got its share of the cores (was: one thread per core each).
SERVE_QUIET_SHARED_CORES = tuple(f"docs/serve-quiet/shared-cores-round-{i}.json" for i in (1, 2, 3))
# Later quiet rounds and `cdd-bench search-cost` of the same bundle in the same window (docs/serve-budget/).
SERVE_BUDGET_ROUNDS = tuple(f"docs/serve-budget/round-{i}.json" for i in (1, 2, 3))
SEARCH_COST = "docs/serve-budget/search-cost.json"
# cdd-serve with its workers pinned one per core (--cpu-affinity auto) and not (off), rounds run as pairs.
SERVE_AFFINITY_AUTO = tuple(f"docs/serve-affinity/auto-round-{i}.json" for i in range(1, 7))
SERVE_AFFINITY_OFF = tuple(f"docs/serve-affinity/off-round-{i}.json" for i in range(1, 7))


@dataclass(frozen=True)
class Table:
    """A table: the results files it reads (in order) and the function turning their contents into markdown."""

    files: tuple[str, ...]
    render: Callable[[list[dict[str, Any]]], str]


def table_for(name: str) -> Table:
    """The Table of results block NAME. Raises ResultsError listing the valid names for an unknown one."""
    fixed = {
        "demo": Table((DEMO_TEACHER, DEMO_STUDENT, DEMO_REFINE), lambda d: teacher_student_table(
            d[0], d[1], (DEMO_TEACHER, DEMO_STUDENT, DEMO_REFINE), refined=d[2])),
        "demo-epochs": Table((DEMO_STUDENT,), lambda d: epochs_table(d[0], DEMO_STUDENT)),
        "demo-student-runs": Table(DEMO_STUDENT_RUNS, lambda d: student_runs_table(d, DEMO_STUDENT_RUNS)),
        "demo-reset-decay": Table(DEMO_RESET_DECAY_RUNS, lambda d: student_runs_table(d, DEMO_RESET_DECAY_RUNS)),
        "demo-repeats": Table(DEMO_REPEAT_FILES, lambda d: repeat_runs_table(d, DEMO_REPEAT_FILES, DEMO_REPEATS)),
        "demo-recomputed-bn": Table(DEMO_RECOMPUTED_BN, lambda d: recomputed_statistics_table(
            d, DEMO_RECOMPUTED_BN, DEMO_REPEATS)),
        "demo-recomputed-bn-runs": Table(DEMO_RECOMPUTED_BN, lambda d: student_runs_table(d, DEMO_RECOMPUTED_BN)),
        "demo-shrink-end-pairs": Table(DEMO_SHRINK_PAIR_FILES, lambda d: paired_runs_table(
            d, DEMO_SHRINK_PAIR_FILES, DEMO_SHRINK_PAIRS, SHRINK_END_LABELS)),
        "demo-repeats-shrink-0.7": Table(DEMO_REPEAT_FILES_0_7, lambda d: repeat_runs_table(
            d, DEMO_REPEAT_FILES_0_7, DEMO_REPEATS_0_7)),
        "benchmark-targets": Table(("docs/benchmarks.json",), lambda d: targets_table(d[0], "docs/benchmarks.json")),
        "step-time": Table(STEP_TIME, lambda d: step_time_table(d, STEP_TIME)),
        "serve-quiet": Table(SERVE_QUIET, lambda d: serve_rounds_table(d, SERVE_QUIET)),
        "serve-affinity": Table((*SERVE_AFFINITY_AUTO, *SERVE_AFFINITY_OFF), lambda d: serve_pairs_table(
            d[:len(SERVE_AFFINITY_AUTO)], d[len(SERVE_AFFINITY_AUTO):], (*SERVE_AFFINITY_AUTO, *SERVE_AFFINITY_OFF),
            ("pinned (auto)", "not pinned (off)"))),
        "serve-affinity-rounds": Table(SERVE_AFFINITY_AUTO, lambda d: serve_rounds_table(d, SERVE_AFFINITY_AUTO)),
        "serve-affinity-budget": Table((*SERVE_AFFINITY_AUTO, SEARCH_COST), lambda d: serve_budget_table(
            d[:-1], SERVE_AFFINITY_AUTO, d[-1]["search_cost"])),
        "serve-budget-rounds": Table(SERVE_BUDGET_ROUNDS, lambda d: serve_rounds_table(d, SERVE_BUDGET_ROUNDS)),
        "search-cost": Table((SEARCH_COST,), lambda d: search_cost_markdown(d[0]["search_cost"])),
        "serve-budget": Table((*SERVE_BUDGET_ROUNDS, SEARCH_COST), lambda d: serve_budget_table(
            d[:-1], SERVE_BUDGET_ROUNDS, d[-1]["search_cost"])),
        "serve-quiet-shared-cores": Table(SERVE_QUIET_SHARED_CORES, lambda d: serve_rounds_table(
            d, SERVE_QUIET_SHARED_CORES)),
        "animal-mnist-folds": Table(FOLDS_FILES, lambda d: fold_table(d, FOLDS, FOLDS_FILES)),
        "animal-mnist-folds-refine": Table(FOLDS_FILES, lambda d: fold_table(d, FOLDS, FOLDS_FILES,
                                                                             reference="refine")),
        "animal-mnist-folds-0-3": Table(FOLDS_FILES[:2], lambda d: fold_table(d, FOLDS[:4], FOLDS_FILES[:2])),
        "animal-mnist-folds-0-3-refine": Table(FOLDS_FILES[:2], lambda d: fold_table(
            d, FOLDS[:4], FOLDS_FILES[:2], reference="refine")),
        "animal-mnist-folds-study": Table(FOLDS_STUDY, lambda d: fold_table(d, FOLDS, FOLDS_STUDY)),
        "animal-mnist-folds-study-cdd-cubic": Table(FOLDS_STUDY, lambda d: fold_table(
            d, FOLDS, FOLDS_STUDY, reference="cdd-cubic")),
        "animal-mnist-folds-study-cdd-ratio-0.5": Table(FOLDS_STUDY, lambda d: fold_table(
            d, FOLDS, FOLDS_STUDY, reference="cdd-ratio-0.5")),
        "animal-mnist-folds-map": Table(FOLDS_FILES, lambda d: fold_map_table(d, FOLDS, FOLDS_FILES)),
        **{f"refine-start-synthetic-{short}": Table((REFINE_START_SYNTHETIC,), lambda d, ref=ref: per_seed_table(
            d[0], "synthetic", REFINE_START_SYNTHETIC, reference=ref)) for short, ref in REFINE_START_REFERENCES},
        **{f"refine-start-animal-mnist-{short}": Table(REFINE_START_FOLDS, lambda d, ref=ref: fold_table(
            d, FOLDS, REFINE_START_FOLDS, reference=ref)) for short, ref in REFINE_START_REFERENCES},
        "animal-mnist-folds-long": Table(FOLDS_LONG, lambda d: fold_table(d, FOLDS, FOLDS_LONG, reference="refine")),
        "animal-mnist-folds-long-hp": Table(FOLDS_LONG, lambda d: fold_table(
            d, FOLDS, FOLDS_LONG, reference="refine-plain")),
        "refine-start-animal-mnist-map": Table(REFINE_START_FOLDS, lambda d: fold_map_table(
            d, FOLDS, REFINE_START_FOLDS)),
        "animal-mnist-teacher-length": Table(TEACHER_LENGTH, lambda d: two_settings_table(
            d[0], d[1], "animal-mnist", "teacher", ("teacher, 8 epochs", "teacher, 24 epochs"), TEACHER_LENGTH)),
    }
    if name in fixed:
        return fixed[name]
    if name.startswith("batchnorm-gain-"):  # a re-measured ablation: recomputed minus exported, per variant
        dataset = name.removeprefix("batchnorm-gain-")
        source = f"docs/ablation-{dataset}-recomputed-bn.json"
        return Table((source,), lambda d: batchnorm_gain_table(d[0], f"{dataset}-recomputed-bn", source))
    if name.startswith("ablation-"):
        if name.endswith("-refine"):  # per seed, the refined student minus every variant
            dataset = name.removeprefix("ablation-").removesuffix("-refine")
            source = f"docs/ablation-{dataset}.json"
            return Table((source,), lambda d: per_seed_table(d[0], dataset, source, reference="refine"))
        dataset = name.removeprefix("ablation-").removesuffix("-seeds")
        source = f"docs/ablation-{dataset}.json"
        table = per_seed_table if name.endswith("-seeds") else summary_table
        return Table((source,), lambda d: table(d[0], dataset, source))
    if name.startswith("shrink-end-"):  # one variant under the preset before (0.7) and the shipped one (0.5)
        dataset, variant = next(((d, name.removeprefix(f"shrink-end-{d}-")) for d in ("synthetic", "animal-mnist")
                                 if name.startswith(f"shrink-end-{d}-")), (None, None))
        if dataset is not None:
            files = (f"docs/ablation-{dataset}-shrink-end-0.7.json", f"docs/ablation-{dataset}.json")
            return Table(files, lambda d: two_settings_table(d[0], d[1], dataset, variant, SHRINK_END_LABELS,
                                                             files))
    if name.startswith("run-length-animal-mnist-"):  # one variant with 8 and 16 epochs per run, same seeds
        variant = name.removeprefix("run-length-animal-mnist-")
        return Table(RUN_LENGTH, lambda d: two_settings_table(d[0], d[1], "animal-mnist", variant,
                                                              RUN_LENGTH_LABELS, RUN_LENGTH))
    if name.startswith("epochs-"):  # another student run's per-epoch table, docs/results/<name>.json
        source = f"docs/results/{name.removeprefix('epochs-')}.json"
        return Table((source,), lambda d: epochs_table(d[0], source))
    if name.startswith("engine-"):
        source = f"docs/{name}/engine.json"
        return Table((source,), lambda d: engine_table(d[0], source))
    raise ResultsError(f"unknown results table {name!r}; valid: {NAMES_HELP}")


def _load(root: Path, relative: str) -> dict[str, Any]:
    path = root / relative
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultsError(f"{relative}: results file not found; produce it (see training/results/registry.py) "
                           "and commit it") from None
    except ValueError as exc:
        raise ResultsError(f"{relative}: not readable JSON ({exc}); produce it again") from exc
    if not isinstance(data, dict):
        raise ResultsError(f"{relative}: must hold a JSON object, found {type(data).__name__}")
    return data


def render_table(name: str, root: str | Path = ".") -> str:
    """Markdown for block NAME from the results files under ``root``: the table, a blank line, then one
    stamp line per file (date, commit, machine)."""
    table = table_for(name)
    data = [_load(Path(root), relative) for relative in table.files]
    stamps = [stamp_line(d.get("stamp"), relative) for d, relative in zip(data, table.files, strict=True)]
    return "\n".join([table.render(data), "", "\n\n".join(stamps)])
