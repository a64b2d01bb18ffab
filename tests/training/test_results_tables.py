"""Results tables in README.md and docs/: rendered from committed results files, never typed by hand."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from training.ablation_report import summarise
from training.results.__main__ import documents, main, render_documents
from training.results.ablation_tables import (
    batchnorm_gain_table,
    fold_map_table,
    fold_table,
    per_seed_table,
    two_settings_table,
)
from training.results.markers import MarkerError, find_blocks, replace_blocks
from training.results.run_files import collect_run, stamp_file
from training.results.stamp import StampError, simd_summary, stamp_line
from training.results.tables import (
    ResultsError,
    epochs_table,
    paired_runs_table,
    recomputed_statistics_table,
    repeat_runs_table,
)

ROOT = Path(__file__).resolve().parents[2]
STAMP = {"date": "2026-12-01T10:00:00Z", "commit": "0123456789abcdef", "dirty": False,
         "machine": {"cpu": "Test CPU", "cpu_flags": ["avx2", "fma", "avx512f", "avx512_vnni"], "cores": 4}}


def test_every_committed_results_table_is_what_its_files_render() -> None:
    blocks = [b.name for path in documents(ROOT) for b in find_blocks(path.read_text(), str(path))]
    assert {"demo", "demo-epochs", "benchmark-targets", "ablation-synthetic", "ablation-synthetic-seeds",
            "engine-demo", "step-time"} <= set(blocks)
    assert render_documents(ROOT, check=True) == [], "run `make results` and commit the rewritten tables"


def _copy_docs(tmp_path: Path) -> Path:
    for name in ("README.md", "docs"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name, ignore=shutil.ignore_patterns("*.png"))
        else:
            shutil.copy(source, tmp_path / name)
    return tmp_path


def test_a_number_edited_by_hand_or_a_changed_results_file_is_caught_and_rendered_back(tmp_path: Path) -> None:
    root = _copy_docs(tmp_path)
    ablation = root / "docs" / "ablation.md"
    committed = ablation.read_text()
    # the first rendered number of the file's first results block, one point higher (whatever the results are)
    block = find_blocks(committed, str(ablation))[0]
    number = re.compile(r"\| (\d+)\.(\d\d) ").search(committed, block.start, block.end)
    assert number is not None, f"{ablation}: no table number in results:{block.name}"
    edited = f"| {int(number[1]) + 1}.{number[2]} "
    ablation.write_text(committed[:number.start()] + edited + committed[number.end():])
    assert render_documents(root, check=True) == ["docs/ablation.md"]
    assert main(["render", "--check", "--root", str(root)]) == 1
    assert render_documents(root, check=False) == ["docs/ablation.md"]
    assert ablation.read_text() == committed
    bench = root / "docs" / "benchmarks.json"
    data = json.loads(bench.read_text())
    data["targets"][0]["measured"] = 1.5
    bench.write_text(json.dumps(data))
    assert render_documents(root, check=True) == ["docs/benchmarks.md"]
    render_documents(root, check=False)
    assert "| 1.50 | 2.50 | met |" in (root / "docs" / "benchmarks.md").read_text()


@pytest.mark.parametrize(("text", "message"), [
    ("a\n<!-- results:x -->\nb\n", "doc.md:2: results:x is never closed"),
    ("<!-- results:x -->\n<!-- results:y -->\n", "doc.md:2: results:y opens inside results:x"),
    ("a\n\n<!-- /results:x -->\n", "doc.md:3: <!-- /results:x --> closes a block that is not open"),
    ("<!-- results:x -->\n<!-- /results:x -->\n<!-- results:x -->\n<!-- /results:x -->",
     "doc.md:4: results:x appears twice"),
])
def test_broken_markers_are_refused_naming_the_line(text: str, message: str) -> None:
    with pytest.raises(MarkerError, match="^doc.md:") as error:
        find_blocks(text, "doc.md")
    assert message in str(error.value)


def test_only_the_text_between_markers_is_replaced() -> None:
    text = ("head `<!-- results:a -->` quoted\n<!-- results:a -->\nold a\n<!-- /results:a -->\nmiddle\n"
            "<!-- results:b -->\n<!-- /results:b -->\ntail")
    out = replace_blocks(text, lambda name: f"  new {name}\n\n")
    assert out == ("head `<!-- results:a -->` quoted\n<!-- results:a -->\nnew a\n<!-- /results:a -->\nmiddle\n"
                   "<!-- results:b -->\nnew b\n<!-- /results:b -->\ntail")


def test_stamp_line_names_date_commit_cpu_and_simd_families() -> None:
    line = stamp_line({**STAMP, "dirty": True}, "docs/x.json")
    assert line == ("*From `docs/x.json`: 2026-12-01, commit 0123456789 + local changes, Test CPU, 4 cores "
                    "(avx2 yes, avx512 yes, vnni yes, amx no).*")
    assert simd_summary(["avx2", "amx_tile"]) == "avx2 yes, avx512 no, vnni no, amx yes"
    with pytest.raises(StampError, match=r"docs/x.json: no \"stamp\".*python -m training.results stamp docs/x.json"):
        stamp_line(None, "docs/x.json")
    with pytest.raises(StampError, match="stamp lacks commit"):
        stamp_line({"date": "2026-12-01", "machine": STAMP["machine"]}, "docs/x.json")


def _final(seed: int, m: float) -> dict:
    return {"seed": seed, "mAP": m, "rank1": m + 10, "params": 100, "flops": 1000, "flops_reduction": 75.0}


def test_per_seed_table_pairs_by_seed_and_leaves_missing_seeds_blank() -> None:
    runs = {"toy": {"cdd": [_final(0, 50.0), _final(1, 40.0), _final(2, 45.0)],
                    "teacher": [_final(2, 44.0), _final(0, 47.0), _final(1, 41.0)],
                    "static": [_final(0, 52.0), _final(2, 45.5)]}}
    table = per_seed_table({"summary": summarise(runs), "runs": runs}, "toy", "toy.json").splitlines()
    assert table[0] == ("| variant | mAP %, seed 0 | mAP %, seed 1 | mAP %, seed 2 | CDD minus it, seed 0 | "
                        "CDD minus it, seed 1 | CDD minus it, seed 2 | mean ± sd | standard error of the mean |")
    assert table[2] == "| (a) teacher | 47.00 | 41.00 | 44.00 | +3.00 | -1.00 | +1.00 | +1.00 ± 2.00 | 1.15 |"
    assert table[3] == "| (b) CDD student | 50.00 | 40.00 | 45.00 |  |  |  |  |  |"
    assert table[4] == ("| (c) static student, same arch, scratch | 52.00 |  | 45.50 | -2.00 |  | -0.50 | -1.25 ± 1.06 "
                        "| 0.75 |")


def test_two_settings_table_pairs_one_variant_by_seed_over_the_seeds_both_files_hold() -> None:
    base = {"runs": {"toy": {"teacher": [_final(1, 41.0), _final(0, 47.0), _final(2, 44.0)]}}}
    other = {"runs": {"toy": {"teacher": [_final(0, 50.0), _final(1, 40.0), _final(3, 99.0)]}}}
    table = two_settings_table(base, other, "toy", "teacher", ("short", "long"), ("a.json", "b.json")).splitlines()
    assert table[0] == "|  | mAP %, seed 0 | mAP %, seed 1 | mean ± sd |"
    assert table[2:] == ["| short | 47.00 | 41.00 |  |", "| long | 50.00 | 40.00 |  |",
                         "| long minus short | +3.00 | -1.00 | +1.00 ± 2.83 |"]
    with pytest.raises(ValueError, match=r"a.json: no toy/cdd runs with seeds"):
        two_settings_table(base, other, "toy", "cdd", ("short", "long"), ("a.json", "b.json"))


def test_a_named_results_file_is_read_under_its_plain_dataset_name() -> None:
    runs = {"toy": {"cdd": [_final(0, 50.0), _final(1, 40.0)], "teacher": [_final(0, 47.0), _final(1, 41.0)]}}
    result = {"summary": summarise(runs), "runs": runs}
    assert per_seed_table(result, "toy-study", "x.json") == per_seed_table(result, "toy", "x.json")
    with pytest.raises(ValueError, match=r"no summary/runs for dataset 'other-study'"):
        per_seed_table(result, "other-study", "x.json")


def test_the_fold_table_averages_each_seed_over_the_folds_before_the_spread_over_seeds() -> None:
    # two files, three folds; fold 0 has a seed the others lack (2), which must not count
    first = {"runs": {"toy": {"cdd": [_final(0, 50.0), _final(1, 40.0), _final(2, 99.0)],
                              "prune-distill": [_final(0, 52.0), _final(1, 39.0), _final(2, 0.0)]}}}
    rest = {"runs": {"toy-fold-1": {"cdd": [_final(0, 60.0), _final(1, 61.0)],
                                    "prune-distill": [_final(0, 59.0), _final(1, 65.0)]},
                     "toy-fold-2": {"cdd": [_final(1, 70.0), _final(0, 70.0)],
                                    "prune-distill": [_final(0, 71.0), _final(1, 70.0)]}}}
    table = fold_table([first, rest], ("toy", "toy-fold-1", "toy-fold-2"), ("a.json", "b.json")).splitlines()
    assert table[0] == ("| variant | CDD minus it, fold 0: mean ± sd over seeds | CDD minus it, fold 1: mean ± sd over "
                        "seeds | CDD minus it, fold 2: mean ± sd over seeds | seed 0: mean over folds | seed 1: mean "
                        "over folds | mean ± sd over seeds | standard error of the mean | (fold, seed) pairs ahead |")
    # seed 0: (-2 + 1 - 1) / 3 = -0.67; seed 1: (1 - 4 + 0) / 3 = -1.00; their mean -0.83, sd 0.24, se 0.17
    assert table[2] == ("| (e) prune-then-distill, CDD's channels | -0.50 ± 2.12 | -1.50 ± 3.54 | -0.50 ± 0.71 | -0.67 "
                        "| -1.00 | -0.83 ± 0.24 | 0.17 | 2 of 6 |")
    with pytest.raises(ValueError, match=r"no file of \['a.json', 'b.json'\] holds dataset 'toy-fold-3'"):
        fold_table([first, rest], ("toy", "toy-fold-3"), ("a.json", "b.json"))
    with pytest.raises(ValueError, match=r"some fold lacks 'refine' runs"):
        fold_table([first, rest], ("toy", "toy-fold-1"), ("a.json", "b.json"), reference="refine")
    mAP = fold_map_table([first, rest], ("toy", "toy-fold-1", "toy-fold-2"), ("a.json", "b.json")).splitlines()
    assert mAP[0] == "| variant | fold 0: mAP % (seeds 0-1) | fold 1: mAP % (seeds 0-1) | fold 2: mAP % (seeds 0-1) |"
    assert mAP[2:] == ["| (b) CDD student | 45.00 ± 7.07 | 60.50 ± 0.71 | 70.00 ± 0.00 |",
                       "| (e) prune-then-distill, CDD's channels | 45.50 ± 9.19 | 62.00 ± 4.24 | 70.50 ± 0.71 |"]


def test_the_fold_table_merges_the_runs_of_every_file_holding_a_fold() -> None:
    # the main file has CDD and (e); a study file has CDD again (same runs) and a study variant on both folds
    main = {"runs": {"toy": {"cdd": [_final(0, 50.0), _final(1, 40.0)], "prune-distill": [_final(0, 52.0),
                                                                                          _final(1, 39.0)]},
                     "toy-fold-1": {"cdd": [_final(0, 60.0), _final(1, 61.0)],
                                    "prune-distill": [_final(0, 59.0), _final(1, 65.0)]}}}
    study = {"runs": {"toy": {"cdd": [_final(0, 50.0), _final(1, 40.0)], "cdd-cubic": [_final(0, 53.0),
                                                                                       _final(1, 41.0)]},
                      "toy-fold-1": {"cdd": [_final(0, 60.0), _final(1, 61.0)],
                                     "cdd-cubic": [_final(0, 58.0), _final(1, 60.0)]}}}
    files, folds = ("main.json", "study.json"), ("toy", "toy-fold-1")
    table = fold_table([main, study], folds, files).splitlines()
    assert [row.split(" | ")[0] for row in table[2:]] == ["| (e) prune-then-distill, CDD's channels",
                                                          "| CDD study: cdd-cubic"]
    # the study variant as the reference: cubic minus (e) per fold: fold 0 (+1, +2), fold 1 (-1, -5)
    # seed 0: (1 - 1) / 2 = 0.00; seed 1: (2 - 5) / 2 = -1.50
    cubic = fold_table([main, study], folds, files, reference="cdd-cubic").splitlines()
    assert cubic[0].startswith("| variant | cdd-cubic minus it, fold 0: mean ± sd over seeds |")
    assert "| (e) prune-then-distill, CDD's channels | +1.50 ± 0.71 | -3.00 ± 2.83 | +0.00 | -1.50 |" in cubic[3]
    study["runs"]["toy"]["cdd"][1] = _final(1, 40.5)
    with pytest.raises(ValueError, match=r"toy/cdd seed 1: mAP 40.0 in main.json but 40.5 in study.json"):
        fold_table([main, study], folds, files)


def test_ablation_runs_without_seeds_are_refused() -> None:
    runs = {"toy": {"cdd": [{"mAP": 1.0}]}}
    with pytest.raises(ValueError, match=r"toy.json: runs of toy/cdd lack \"seed\""):
        per_seed_table({"summary": {"toy": {}}, "runs": runs}, "toy", "toy.json")


def _run_dir(tmp_path: Path, final: bool = True) -> Path:
    run = tmp_path / "run"
    run.mkdir(parents=True)
    metrics = {"kind": "student", "epochs": [{"epoch": 1}], **({"final": {"mAP": 50.0}} if final else {})}
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "config.json").write_text(json.dumps({"data": {"height": 64, "width": 32}}))
    return run


def test_collect_copies_metrics_config_and_the_runs_stamp(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    with pytest.raises(StampError, match=r"run/stamp.json: not found .*--stamp-now"):
        collect_run(run)
    now = collect_run(run, stamp_now=True)
    assert now["stamp"]["note"] == "stamped when collected, not when the run started"
    (run / "stamp.json").write_text(json.dumps(STAMP))
    result = collect_run(run)
    assert result == {"kind": "student", "epochs": [{"epoch": 1}], "final": {"mAP": 50.0},
                      "config": {"data": {"height": 64, "width": 32}}, "stamp": STAMP}
    unfinished = _run_dir(tmp_path / "other")
    (unfinished / "metrics.json").write_text(json.dumps({"kind": "student", "epochs": []}))
    with pytest.raises(ValueError, match="the run has not finished"):
        collect_run(unfinished, stamp_now=True)


def test_stamp_keeps_a_benchmarks_own_machine_and_refuses_a_second_stamp(tmp_path: Path) -> None:
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"machine": {"cpu": "Bench CPU", "cpu_flags": ["avx2"], "usable_cores": 7}}))
    stamp_file(path)
    stamp = json.loads(path.read_text())["stamp"]
    assert stamp["machine"]["cpu"] == "Bench CPU" and stamp["machine"]["cores"] == 7
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert stamp["commit"] == (head or None)
    with pytest.raises(StampError, match="already stamped"):
        stamp_file(path)


def test_rendering_the_docs_never_imports_torch() -> None:
    code = ("import sys; from pathlib import Path; from training.results.__main__ import render_documents; "
            f"render_documents(Path({str(ROOT)!r}), check=True); print(sorted(m for m in sys.modules "
            "if m.split('.')[0] == 'torch'))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def _run(mAP, ratio):
    return {"final": {"mAP": mAP, "compression": {"collapse_check": {"lowest_ratio": ratio}}}}


def test_the_paired_runs_table_subtracts_within_each_pair_and_summarises_the_differences():
    results = [_run(50.0, 0.9), _run(51.5, 0.8), _run(40.0, 0.85), _run(39.5, 0.7)]
    lines = paired_runs_table(results, [f"f{i}.json" for i in range(4)], ["p0", "p1"], ("a", "b")).splitlines()
    assert lines[0] == ("| pair | mAP %, a | mAP %, b | b minus a | lowest eval / best before, a | "
                        "lowest eval / best before, b |")
    assert lines[2:] == ["| p0 | 50.00 | 51.50 | +1.50 | 0.900 | 0.800 |",
                         "| p1 | 40.00 | 39.50 | -0.50 | 0.850 | 0.700 |",
                         "| mean ± sd (2 pairs) |  |  | +0.50 ± 1.41 |  |  |"]
    with pytest.raises(ResultsError, match=r"two results files per pair and at least 2 pairs, found 3 file\(s\)"):
        paired_runs_table(results[:3], ["a", "b", "c"], ["p0", "p1"], ("a", "b"))


def _stage(mAP, flops_cut=81.5, running=None, recomputed=None, fresh=None):
    """A stage's results file: a CDD stage's collapse check with running statistics only (older files) or with
    both (``recomputed`` = the check on evaluations with recomputed statistics)."""
    final = {"mAP": mAP, "flops_reduction": flops_cut}
    if running is not None:
        check = {"lowest_ratio": running, "at_epoch": 14}
        if recomputed is not None:
            check = {"lowest_ratio": recomputed, "at_epoch": 12, "running_stats": check}
        final["compression"] = {"collapse_check": check}
    if fresh is not None:
        final["recomputed_stats"] = {"mAP": fresh, "rank1": 70.0}
    return {"final": final}


def test_the_repeats_table_shows_both_collapse_checks_once_a_run_measured_both():
    old = [_stage(50.0), _stage(53.0, running=0.7), _stage(54.0)]
    new = [_stage(50.0), _stage(52.0, running=0.69, recomputed=0.92), _stage(53.0)]
    lines = repeat_runs_table(old + new, [f"f{i}.json" for i in range(6)], ["old", "new"]).splitlines()
    assert lines[0].endswith("| CDD stage: lowest eval / best before | the same, BatchNorm statistics recomputed |")
    assert lines[2:] == ["| old | 50.00 | 53.00 | 54.00 | +4.00 | 81.5% | 0.700 |  |",
                         "| new | 50.00 | 52.00 | 53.00 | +3.00 | 81.5% | 0.690 | 0.920 |"]
    only_old = repeat_runs_table(old, ["a", "b", "c"], ["old"]).splitlines()
    assert only_old[0].endswith("| FLOPs cut | CDD stage: lowest eval / best before |")
    assert only_old[2] == "| old | 50.00 | 53.00 | 54.00 | +4.00 | 81.5% | 0.700 |"


def test_the_recomputed_statistics_table_subtracts_per_run_and_refuses_a_run_without_it():
    runs = [_stage(55.49, fresh=56.2), _stage(52.66, fresh=53.45)]
    lines = recomputed_statistics_table(runs, ["a.json", "b.json"], ["s0", "s1"]).splitlines()
    assert lines[2:] == ["| s0 | 55.49 | 56.20 | +0.71 |", "| s1 | 52.66 | 53.45 | +0.79 |",
                         "| mean ± sd (2 runs) |  |  | +0.75 ± 0.06 |"]
    with pytest.raises(ResultsError, match=r"b.json: no \"final.recomputed_stats\""):
        recomputed_statistics_table([runs[0], _stage(50.0)], ["a.json", "b.json"], ["s0", "s1"])


def test_the_batchnorm_gain_table_subtracts_the_exported_map_per_run():
    def final(seed, fresh, exported):
        return {"seed": seed, "mAP": fresh, "exported_mAP": exported}
    result = {"summary": {"tiny": {}}, "runs": {"tiny": {
        "cdd": [final(0, 49.36, 48.71), final(1, 48.0, 47.55)], "teacher": [final(0, 47.5, 47.6)]}}}
    for f, (fresh, exported) in zip(result["runs"]["tiny"]["cdd"], ((50.0, 51.0), (49.0, 49.5)), strict=True):
        f.update(asymmetric={"mAP": fresh}, exported_asymmetric={"mAP": exported})
    lines = batchnorm_gain_table(result, "tiny-recomputed-bn", "f.json").splitlines()
    assert lines[0] == ("| variant | seed 0 | seed 1 | mean ± sd | seeds where it helped | "
                        "queries on the teacher's gallery: mean change |")
    assert lines[2:] == ["| (a) teacher | -0.10 |  |  | 0 of 1 |  |",
                         "| (b) CDD student | +0.65 | +0.45 | +0.55 ± 0.14 | 2 of 2 | -0.75 (0 of 2 up) |"]
    del result["runs"]["tiny"]["teacher"][0]["exported_mAP"]
    with pytest.raises(ResultsError, match=r'f.json: tiny/teacher lacks "exported_mAP"'):
        batchnorm_gain_table(result, "tiny", "f.json")


def test_the_epochs_table_shows_the_running_statistics_beside_the_recomputed_ones_when_measured():
    def epoch(n, evaluation=None):
        return {"epoch": n, "lr": 0.02, "loss": {"total": 5.0}, **({"eval": evaluation} if evaluation else {})}
    old = {"epochs": [epoch(1), epoch(2, {"mAP": 40.0})]}
    assert epochs_table(old).splitlines()[0].endswith("| FLOPs cut scheduled | mAP % |")
    new = {"epochs": [epoch(1), epoch(2, {"mAP": 48.7, "running_stats": {"mAP": 35.82, "rank1": 50.0}})]}
    lines = epochs_table(new).splitlines()
    assert lines[0].endswith("| mAP %, BatchNorm statistics recomputed | mAP %, running statistics |")
    assert lines[2].endswith("|  |  |") and lines[3].endswith("| 48.70 | 35.82 |")
