"""Ablation bookkeeping: each baseline's wiring, paired-by-seed differences and the plain verdict sentences."""

import json
from pathlib import Path

import pytest

from training.ablation import (
    DATASETS,
    LONG,
    STUDIES,
    _variant_overrides,
    _with_prerequisites,
    main,
    write_l1_arch,
)
from training.ablation_report import format_markdown, paired, summarise


def test_prune_then_distill_is_the_cdd_arch_initialised_from_the_teacher():
    preset, overrides = _variant_overrides("prune-distill", Path("r"))
    assert preset == "demo-student"
    assert f'cdd.static_arch="{Path("r") / "cdd" / "arch.json"}"' in overrides
    assert 'model.init="teacher"' in overrides
    _, static = _variant_overrides("static", Path("r"))
    assert 'model.init="scratch"' in static


def test_standard_pruning_and_born_again_baselines_start_from_the_teacher():
    _, l1 = _variant_overrides("l1-distill", Path("r"))
    assert f'cdd.static_arch="{Path("r") / "l1-arch.json"}"' in l1 and 'model.init="teacher"' in l1
    _, born = _variant_overrides("born-again", Path("r"))
    assert f'cdd.static_arch="{Path("r") / "teacher" / "arch.json"}"' in born and 'model.init="teacher"' in born
    _, study = _variant_overrides("cdd-no-schedule", Path("r"))
    assert STUDIES["cdd-no-schedule"][0] in study and f'run.out_dir="{Path("r") / "cdd-no-schedule"}"' in study


def test_refine_start_variants_differ_from_the_refine_stage_in_one_setting_each():
    _, refine = _variant_overrides("refine", Path("r"))
    source = f'cdd.refine_from="{Path("r") / "cdd"}"'
    assert source in refine
    for variant, setting in (("refine-from-teacher", 'cdd.refine_init="teacher"'),
                             ("refine-plain", 'cdd.refine_form="plain"')):
        preset, overrides = _variant_overrides(variant, Path("r"))
        assert preset == "demo-refine" and set(overrides) - set(refine) == {
            setting, f'run.out_dir="{Path("r") / variant}"'}
    _, l1 = _variant_overrides("l1-refine-from-teacher", Path("r"))
    assert f'cdd.refine_from="{Path("r") / "l1-arch.json"}"' in l1 and source not in l1
    assert _with_prerequisites(["refine-plain"]) == ["teacher", "cdd", "refine-plain"]


def test_baselines_pull_in_the_runs_they_need_in_order():
    assert _with_prerequisites(["l1-distill"]) == ["teacher", "cdd", "l1-distill"]
    assert _with_prerequisites(["born-again"]) == ["teacher", "born-again"]
    with pytest.raises(ValueError, match="unknown variant"):
        _with_prerequisites(["cdd-typo"])


def test_animal_mnist_class_folds_change_only_the_data_folder():
    base = DATASETS["animal-mnist"]
    for fold in range(1, 6):
        settings = DATASETS[f"animal-mnist-fold-{fold}"]
        changed = [(a, b) for a, b in zip(base, settings, strict=True) if a != b]
        assert changed == [('data.root="data/animal-mnist"', f'data.root="data/animal-mnist-fold-{fold}"')]
        assert LONG[f"animal-mnist-fold-{fold}"] == LONG["animal-mnist"]


def test_collect_only_writes_the_finished_runs_and_trains_nothing(tmp_path):
    runs = tmp_path / "runs" / "animal-mnist-fold-1"
    for seed, variant, final in ((0, "teacher", _final(60.0, 0)), (0, "cdd", _final(62.5, 0)),
                                 (1, "teacher", _final(58.0, 1)), (1, "cdd", None)):  # seed 1's CDD still training
        run = runs / f"seed{seed}" / variant
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({"epochs": [], **({"final": final} if final else {})}))
    out = tmp_path / "out"
    assert main(["--datasets", "animal-mnist-fold-1", "--seeds", "0", "1", "2", "--runs", str(tmp_path / "runs"),
                 "--out", str(out), "--stem", "collected", "--variants", "cdd", "--collect-only"]) == 0
    written = json.loads((out / "collected.json").read_text())["runs"]["animal-mnist-fold-1"]
    assert [(r["seed"], r["mAP"]) for r in written["teacher"]] == [(0, 60.0), (1, 58.0)]
    assert [(r["seed"], r["mAP"]) for r in written["cdd"]] == [(0, 62.5)]
    assert sorted(p.name for p in runs.iterdir()) == ["seed0", "seed1"], "nothing was trained"


def _final(mAP, seed, flops=100):
    return {"mAP": mAP, "rank1": mAP + 10, "params": 10, "flops": flops, "flops_reduction": 80.0, "seed": seed}


def test_differences_are_paired_by_seed_not_by_position():
    cdd = [_final(50, 0), _final(40, 1), _final(60, 2)]
    other = [_final(59, 2), _final(48, 0)]  # another order, seed 1 missing
    diff = paired(cdd, other)
    assert diff["seeds"] == [0, 2] and diff["diffs"] == [2.0, 1.0] and diff["wins"] == 2
    assert diff["mean"] == pytest.approx(1.5) and diff["std"] == pytest.approx(0.7071, abs=1e-4)


def test_markdown_says_whether_cdd_beats_each_baseline_seed_by_seed():
    results = {"synthetic": {"cdd": [_final(50, 0), _final(51, 1), _final(52, 2)],
                             "static": [_final(40, 0), _final(41, 1), _final(42, 2)],
                             "prune-distill": [_final(50.5, 0), _final(50.5, 1), _final(51.5, 2)]}}
    text = format_markdown(summarise(results))
    assert ("CDD beats (c) static student, same arch, scratch: paired by seed +10.00, +10.00, +10.00; "
            "mean +10.00, sd 0.00") in text
    assert "CDD is ahead on 2 of 3 seeds against (e) prune-then-distill" in text
    assert "| -0.50 / +0.50 / +0.50 | +0.17 ± 0.58 |" in text
    results["synthetic"]["prune-distill"] = [_final(60, 0), _final(60.5, 1), _final(61, 2)]
    assert "CDD loses to (e)" in format_markdown(summarise(results))


def test_a_single_seed_gives_no_verdict():
    results = {"synthetic": {"cdd": [_final(50, 0)], "static": [_final(40, 0)]}}
    text = format_markdown(summarise(results))
    assert "CDD vs (c) static student, same arch, scratch: +10.00 on a single seed" in text
    assert "beats" not in text


def test_the_standard_pruning_arch_keeps_cdds_counts_and_the_teachers_largest_l1_filters(teacher_run, student_run,
                                                                                         tmp_path):
    """(f)'s arch.json, as the ablation writes it from the CDD run's arch and the teacher's checkpoint, against an
    independent computation of the criterion on the teacher's saved weights."""
    import numpy as np

    from training.arch_spec import ArchSpec
    from training.checkpoint import load_checkpoint

    cdd = ArchSpec.load(student_run / "arch.json")
    written = ArchSpec.load(write_l1_arch(student_run / "arch.json", teacher_run, tmp_path / "l1-arch.json"))
    assert written.kept_counts() == cdd.kept_counts() != [p for _, p in cdd.blocks()]
    teacher = load_checkpoint(teacher_run / "checkpoint.pt", kind="teacher")["model"]
    assert cdd.block_type == "basic"  # so the teacher's conv1 makes each block's inner channels
    for (name, _), count, chosen in zip(cdd.blocks(), cdd.kept_counts(), written.kept_channels, strict=True):
        filters = teacher[f"backbone.{name}.conv1.weight"].double().numpy()
        l1 = np.abs(filters.reshape(filters.shape[0], -1)).sum(axis=1)
        assert list(chosen) == sorted(np.argsort(-l1, kind="stable")[:count].tolist()), name
