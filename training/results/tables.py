"""Markdown tables of training runs and benchmark targets, rendered from results files.

A training results file (``collect``) is a run's ``metrics.json`` (``kind``, ``epochs``, ``final``) plus its
resolved ``config`` and ``stamp``. A benchmark results file is what ``cdd-bench`` writes (``targets``, ...).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from training.shrink_pace import shrink_pace

__all__ = ["ResultsError", "markdown_table", "mean_sd", "teacher_student_table", "epochs_table", "targets_table"]


class ResultsError(ValueError):
    """A results file that lacks what a table needs."""


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> list[str]:
    """A markdown table's lines; ``align`` has one letter per column, "l" (left) or "r" (right, the default
    for every column after the first when ``align`` is empty)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"
    return ["| " + " | ".join(header) + " |", rule, *("| " + " | ".join(row) + " |" for row in rows)]


def _final(result: dict[str, Any], source: str) -> dict[str, Any]:
    final = result.get("final")
    if not isinstance(final, dict):
        raise ResultsError(f"{source}: no \"final\" metrics: the run did not finish; finish it (cdd-train ... "
                           "--resume) and copy it again with `python -m training.results collect`")
    return final


def _input_size(result: dict[str, Any]) -> str:
    data = (result.get("config") or {}).get("data") or {}
    return f", {data['height']}x{data['width']}" if "height" in data and "width" in data else ""


def _collapse_ratios(final: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A student's collapse check as (with running BatchNorm statistics, with recomputed statistics), each
    {"lowest_ratio", "at_epoch"} or {}. Files written before mid-run evaluations recomputed the statistics
    (`run.eval_batchnorm`) hold only the first, as the check itself."""
    check = (final.get("compression") or {}).get("collapse_check") or {}
    if isinstance(check.get("running_stats"), dict):
        return check["running_stats"], check
    return check, {}


def _ratio(check: dict[str, Any]) -> str:
    return f"{check['lowest_ratio']:.3f}" if check.get("lowest_ratio") is not None else ""


def mean_sd(values: Sequence[float]) -> str:
    """"+m.mm ± s.ss": the mean and sample standard deviation of signed differences (two or more)."""
    return f"{statistics.fmean(values):+.2f} ± {statistics.stdev(values):.2f}"


def _without_empty_column(header: list[str], rows: list[list[str]], column: int) -> tuple[list[str], list[list[str]]]:
    """The table without ``column`` when no row has a value there (a measurement no run made)."""
    if any(row[column] for row in rows):
        return header, rows
    return header[:column] + header[column + 1:], [row[:column] + row[column + 1:] for row in rows]


def teacher_student_table(teacher: dict[str, Any], student: dict[str, Any], sources: Sequence[str] = ("teacher",
                          "student", "refined"), refined: dict[str, Any] | None = None) -> str:
    """Params, FLOPs (MACs), mAP and rank-1 of the teacher and the CDD student, plus the refine stage's
    student when given (the shipped one then), with the shipped student's change against the teacher, and
    the shipped student's queries on the teacher's gallery when the run measured them (compatibility loss)."""
    t, s = _final(teacher, sources[0]), _final(student, sources[1])
    r = _final(refined, sources[2]) if refined is not None else None
    shipped = r if r is not None else s
    middle = (lambda row: [row(s), row(r)]) if r is not None else (lambda row: [row(s)])
    rows = [
        ["params", f"{t['params']:,}", *middle(lambda x: f"{x['params']:,}"), f"{-shipped['params_reduction']:+.1f}%"],
        [f"FLOPs (MACs{_input_size(student)})", f"{t['flops']:,}", *middle(lambda x: f"{x['flops']:,}"),
         f"{-shipped['flops_reduction']:+.1f}%"],
        ["mAP %", f"{t['mAP']:.2f}", *middle(lambda x: f"{x['mAP']:.2f}"), f"{shipped['mAP'] - t['mAP']:+.2f}"],
        ["rank-1 %", f"{t['rank1']:.2f}", *middle(lambda x: f"{x['rank1']:.2f}"),
         f"{shipped['rank1'] - t['rank1']:+.2f}"],
    ]
    if isinstance(shipped.get("asymmetric"), dict):
        rows.append(["mAP %, student queries on the teacher's gallery", f"{t['mAP']:.2f}",
                     *middle(lambda x: f"{x['asymmetric']['mAP']:.2f}" if isinstance(x.get("asymmetric"), dict)
                             else ""),
                     f"{shipped['asymmetric']['mAP'] - t['mAP']:+.2f}"])
    header = (["", "teacher", "CDD stage", "refine stage (shipped)", "shipped minus teacher"] if r is not None
              else ["", "teacher", "CDD student", "change"])
    return "\n".join(markdown_table(header, rows))


def _cut(fraction: Any) -> str:
    return f"{100 * (1 - fraction):.1f}%" if isinstance(fraction, (int, float)) else ""


def epochs_table(result: dict[str, Any], source: str = "student") -> str:
    """One row per epoch: learning rate, total loss, reset channels, FLOPs cut so far and scheduled (shrink
    schedule), and the mAP of the epochs that were evaluated (with recomputed and with running BatchNorm
    statistics, for runs that measured both)."""
    epochs = result.get("epochs")
    if not isinstance(epochs, list) or not epochs:
        raise ResultsError(f"{source}: no \"epochs\" list; copy the run's metrics.json again with "
                           "`python -m training.results collect`")
    rows = []
    both = any("running_stats" in (e.get("eval") or {}) for e in epochs)
    for e in epochs:
        pruning, evaluation = e.get("pruning") or {}, e.get("eval") or {}
        running = evaluation.get("running_stats") or {}
        rows.append([str(e["epoch"]), f"{e['lr']:.2e}", f"{e['loss']['total']:.3f}",
                     str(pruning.get("reset_channels", "")), _cut(pruning.get("flops_fraction")),
                     _cut(pruning.get("scheduled_flops_fraction")),
                     f"{evaluation['mAP']:.2f}" if "mAP" in evaluation else "",
                     *([f"{running['mAP']:.2f}" if "mAP" in running else ""] if both else [])])
    header = ["epoch", "lr", "loss", "reset channels", "FLOPs cut", "FLOPs cut scheduled",
              *(["mAP %, BatchNorm statistics recomputed", "mAP %, running statistics"] if both else ["mAP %"])]
    return "\n".join(markdown_table(header, rows))


def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:,.2f}"


def targets_table(bench: dict[str, Any], source: str = "benchmarks") -> str:
    """One row per benchmark target: what, measured, threshold, met / **not met** / not measured, detail."""
    targets = bench.get("targets")
    if not isinstance(targets, list):
        raise ResultsError(f"{source}: no \"targets\" list; it is written by `python -m serving.benchmarks all`")
    status = {True: "met", False: "**not met**", None: "not measured"}
    rows = [[t["target"], _number(t["measured"]), _number(t["threshold"]), status[t["met"]], t["detail"]]
            for t in targets]
    return "\n".join(markdown_table(["target", "measured", "threshold", "status", "detail"], rows, "lrrll"))


def student_runs_table(results: Sequence[dict[str, Any]], sources: Sequence[str]) -> str:
    """One row per student run (named by its results file): epochs, FLOPs cut, final mAP, the collapse check
    (lowest evaluation after resetting started over the best before it, the teacher's counting first, and
    its epoch), the shrink's pace (`training.shrink_pace`: the largest cut in one epoch and the epoch the
    final size was reached) and the student's queries on the teacher's gallery."""
    rows = []
    for result, source in zip(results, sources, strict=True):
        final = _final(result, source)
        collapse, recomputed = _collapse_ratios(final)
        asymmetric = final.get("asymmetric") if isinstance(final.get("asymmetric"), dict) else {}
        epochs = len(result.get("epochs") or [])
        pace = shrink_pace(result.get("epochs") or [], epochs) or {}  # recomputed: older files lack it
        rows.append([f"`{source.rsplit('/', 1)[-1].removesuffix('.json')}`", str(epochs),
                     f"{final['flops_reduction']:.1f}%", f"{final['mAP']:.2f}",
                     _ratio(collapse), str(collapse.get("at_epoch", "")),
                     f"{_ratio(recomputed)} (epoch {recomputed['at_epoch']})" if _ratio(recomputed) else "",
                     f"{pace['largest_epoch_cut']:.1f} (epoch {pace['at_epoch']})" if pace else "",
                     f"{pace['final_size_epoch']} ({pace['final_size_run_fraction']:.0%})" if pace else "",
                     f"{asymmetric['mAP']:.2f}" if "mAP" in asymmetric else ""])
    header = ["run", "epochs", "FLOPs cut", "mAP %", "lowest eval / best before", "at epoch",
              "the same, BatchNorm statistics recomputed", "largest one-epoch cut, % of teacher FLOPs",
              "final size from epoch (of the run)", "mAP %, queries on the teacher's gallery"]
    return "\n".join(markdown_table(*_without_empty_column(header, rows, 6)))


def repeat_runs_table(results: Sequence[dict[str, Any]], sources: Sequence[str], labels: Sequence[str]) -> str:
    """One row per repetition of the demo pipeline; ``results`` holds (teacher, CDD stage, refine stage) per
    label, in order: each stage's mAP, the shipped student's change and FLOPs cut, and the CDD stage's
    collapse check with running BatchNorm statistics (and with recomputed ones, when any run measured them)."""
    rows = []
    for i, label in enumerate(labels):
        t, s, r = (_final(results[3 * i + j], sources[3 * i + j]) for j in range(3))
        running, recomputed = _collapse_ratios(s)
        rows.append([label, f"{t['mAP']:.2f}", f"{s['mAP']:.2f}", f"{r['mAP']:.2f}", f"{r['mAP'] - t['mAP']:+.2f}",
                     f"{r['flops_reduction']:.1f}%", _ratio(running), _ratio(recomputed)])
    header = ["run", "teacher mAP %", "CDD stage mAP %", "refine stage mAP %", "shipped minus teacher",
              "FLOPs cut", "CDD stage: lowest eval / best before", "the same, BatchNorm statistics recomputed"]
    return "\n".join(markdown_table(*_without_empty_column(header, rows, len(header) - 1)))


def recomputed_statistics_table(results: Sequence[dict[str, Any]], sources: Sequence[str],
                                labels: Sequence[str]) -> str:
    """One row per student run: its final mAP as exported (running BatchNorm statistics) and with the
    statistics recomputed from training batches (``final.recomputed_stats``), the difference; then the mean
    ± sample sd of the differences."""
    rows, diffs = [], []
    for result, source, label in zip(results, sources, labels, strict=True):
        final = _final(result, source)
        fresh = final.get("recomputed_stats")
        if not isinstance(fresh, dict):
            raise ResultsError(f"{source}: no \"final.recomputed_stats\": the run did not evaluate with recomputed "
                               "BatchNorm statistics (run.eval_batchnorm = \"recompute\", the default since it exists)")
        diffs.append(fresh["mAP"] - final["mAP"])
        rows.append([label, f"{final['mAP']:.2f}", f"{fresh['mAP']:.2f}", f"{diffs[-1]:+.2f}"])
    if len(diffs) > 1:
        rows.append([f"mean ± sd ({len(diffs)} runs)", "", "", mean_sd(diffs)])
    header = ["run", "mAP %, as exported", "mAP %, BatchNorm statistics recomputed", "recomputed minus exported"]
    return "\n".join(markdown_table(header, rows))


def paired_runs_table(results: Sequence[dict[str, Any]], sources: Sequence[str], labels: Sequence[str],
                      settings: tuple[str, str]) -> str:
    """Two settings of one student run, paired: ``results`` holds (first setting, second setting) per label,
    in order. Per pair: each run's final mAP and collapse check (lowest evaluation after resetting started
    over the best before it), the second minus the first; then the mean ± sample sd of the mAP differences."""
    if len(results) != 2 * len(labels) or len(labels) < 2:
        raise ResultsError(f"a paired table needs two results files per pair and at least 2 pairs, found "
                           f"{len(results)} file(s) for {len(labels)} pair(s): {list(sources)}")
    rows, diffs = [], []
    for i, label in enumerate(labels):
        first, second = (_final(results[2 * i + j], sources[2 * i + j]) for j in range(2))
        ratios = [_collapse_ratios(f)[0].get("lowest_ratio") for f in (first, second)]
        diffs.append(second["mAP"] - first["mAP"])
        rows.append([label, f"{first['mAP']:.2f}", f"{second['mAP']:.2f}", f"{diffs[-1]:+.2f}",
                     *(f"{r:.3f}" if r is not None else "" for r in ratios)])
    rows.append([f"mean ± sd ({len(diffs)} pairs)", "", "", mean_sd(diffs), "", ""])
    a, b = settings
    header = ["pair", f"mAP %, {a}", f"mAP %, {b}", f"{b} minus {a}", f"lowest eval / best before, {a}",
              f"lowest eval / best before, {b}"]
    return "\n".join(markdown_table(header, rows))
