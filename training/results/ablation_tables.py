"""Markdown tables of an ablation results file (``python -m training.ablation`` writes it): per variant the
mean and spread over seeds, and per seed every variant's mAP with CDD minus it on the same seed.

The file holds ``runs[dataset][variant]`` (final metrics of each run, with its ``seed``) and
``summary[dataset][variant]`` (spread over seeds; ``cdd_minus``: CDD minus the variant, paired by seed).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from training.ablation_report import NAMES
from training.results.tables import ResultsError, markdown_table, mean_sd

__all__ = ["variant_order", "summary_table", "per_seed_table", "two_settings_table", "batchnorm_gain_table",
           "fold_table", "fold_map_table"]

_REGENERATE = "regenerate it with `make ablation` (training/ablation.py)"


def _dataset(result: dict[str, Any], dataset: str, source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    # A named file (ablation-synthetic-study-v2.json) holds its dataset under the plain name ("synthetic").
    named = [d for d in (result.get("summary") or {}) if dataset.startswith(f"{d}-")]
    if dataset not in (result.get("summary") or {}) and len(named) == 1:
        dataset = named[0]
    summary, runs = (result.get("summary") or {}).get(dataset), (result.get("runs") or {}).get(dataset)
    if not isinstance(summary, dict) or not isinstance(runs, dict):
        raise ResultsError(f"{source}: no summary/runs for dataset {dataset!r} (has "
                           f"{sorted(result.get('summary') or {})}); {_REGENERATE}")
    if "cdd" not in runs:
        raise ResultsError(f"{source}: dataset {dataset!r} has no CDD student runs (variant \"cdd\"); {_REGENERATE}")
    for variant, finals in runs.items():
        if any("seed" not in f for f in finals):
            raise ResultsError(f"{source}: runs of {dataset}/{variant} lack \"seed\"; the per-seed comparison "
                               f"needs it; {_REGENERATE}")
    return summary, runs


def variant_order(variants: Any) -> list[str]:
    """The lettered baselines in their order (a)-(g), then CDD study variants by name."""
    return [v for v in NAMES if v in variants] + sorted(v for v in variants if v not in NAMES)


def _label(variant: str) -> str:
    return NAMES.get(variant, f"CDD study: {variant}")


def _paired(entry: dict[str, Any]) -> str:
    diff = entry.get("cdd_minus") or {}
    if not diff.get("diffs"):
        return ""
    return f"{diff['mean']:+.2f} ± {diff['std']:.2f} ({diff['wins']} of {len(diff['diffs'])})"


def summary_table(result: dict[str, Any], dataset: str, source: str = "ablation") -> str:
    """Per variant: seeds, mAP and rank-1 (mean ± sample sd over seeds), params, FLOPs, FLOPs cut, and CDD minus
    the variant paired by seed (mean ± sd, seeds where CDD is ahead)."""
    summary, _ = _dataset(result, dataset, source)
    rows = []
    for variant in variant_order(summary):
        v = summary[variant]
        rows.append([_label(variant), str(v["seeds"]), f"{v['mAP']['mean']:.2f} ± {v['mAP']['std']:.2f}",
                     f"{v['rank1']['mean']:.2f} ± {v['rank1']['std']:.2f}", f"{v['params']:,.0f}",
                     f"{v['flops']:,.0f}", f"{v['flops_reduction']:.1f}%", _paired(v)])
    header = ["variant", "seeds", "mAP %", "rank-1 %", "params", "FLOPs (MACs)", "FLOPs cut",
              "CDD minus it, mAP (seeds ahead)"]
    return "\n".join(markdown_table(header, rows))


REFERENCE_WHO = {"cdd": "CDD", "refine": "refined", "refine-from-teacher": "(h0)", "refine-plain": "(hp)"}
"""How a table header names the run every other variant is compared with."""


def per_seed_table(result: dict[str, Any], dataset: str, source: str = "ablation", reference: str = "cdd") -> str:
    """Per variant: its mAP on every seed, then ``reference`` (:data:`REFERENCE_WHO`) minus it on every seed, the
    mean ± sample sd of those differences (from the file's ``<reference>_minus``) and the standard error of
    that mean (sd / sqrt(seeds)): the sd says how much one seed moves, the standard error how well the mean
    difference is known."""
    summary, runs = _dataset(result, dataset, source)
    if reference not in runs:
        raise ResultsError(f"{source}: dataset {dataset!r} has no {reference!r} runs; {_REGENERATE}")
    who = REFERENCE_WHO.get(reference, reference)
    seeds = sorted({f["seed"] for finals in runs.values() for f in finals})
    rows = []
    for variant in variant_order(runs):
        by_seed = {f["seed"]: f["mAP"] for f in runs[variant]}
        diff = (summary.get(variant) or {}).get(f"{reference}_minus") or {"seeds": [], "diffs": []}
        diffs = dict(zip(diff["seeds"], diff["diffs"], strict=True))
        rows.append([_label(variant), *(f"{by_seed[s]:.2f}" if s in by_seed else "" for s in seeds),
                     *(f"{diffs[s]:+.2f}" if s in diffs else "" for s in seeds),
                     f"{diff['mean']:+.2f} ± {diff['std']:.2f}" if diff["diffs"] else "",
                     f"{diff['std'] / math.sqrt(len(diff['diffs'])):.2f}" if len(diff["diffs"]) > 1 else ""])
    header = ["variant", *(f"mAP %, seed {s}" for s in seeds), *(f"{who} minus it, seed {s}" for s in seeds),
              "mean ± sd", "standard error of the mean"]
    return "\n".join(markdown_table(header, rows))


def two_settings_table(base: dict[str, Any], other: dict[str, Any], dataset: str, variant: str,
                       labels: tuple[str, str], sources: tuple[str, str]) -> str:
    """One variant trained two ways (two ablation files, same dataset and seeds): its mAP per seed under each,
    and ``other`` minus ``base`` per seed with the mean ± sample sd of those differences (seeds in both)."""
    by_seed = []
    for result, source in zip((base, other), sources, strict=True):
        finals = ((result.get("runs") or {}).get(dataset) or {}).get(variant)
        if not finals or any("seed" not in f for f in finals):
            raise ResultsError(f"{source}: no {dataset}/{variant} runs with seeds; {_REGENERATE}")
        by_seed.append({f["seed"]: f["mAP"] for f in finals})
    seeds = sorted(set(by_seed[0]) & set(by_seed[1]))
    if len(seeds) < 2:
        raise ResultsError(f"{sources[0]} and {sources[1]} share {len(seeds)} seed(s) of {dataset}/{variant}; "
                           f"a paired comparison needs at least 2; {_REGENERATE}")
    diffs = [by_seed[1][s] - by_seed[0][s] for s in seeds]
    rows = [[label, *(f"{runs[s]:.2f}" for s in seeds), ""] for label, runs in zip(labels, by_seed, strict=True)]
    rows.append([f"{labels[1]} minus {labels[0]}", *(f"{d:+.2f}" for d in diffs),
                 mean_sd(diffs)])
    return "\n".join(markdown_table(["", *(f"mAP %, seed {s}" for s in seeds), "mean ± sd"], rows))


def batchnorm_gain_table(result: dict[str, Any], dataset: str, source: str) -> str:
    """A re-measured ablation file (`training.batchnorm_reevaluation`): per variant, recomputed minus exported
    mAP on every seed (each final's ``mAP`` minus its ``exported_mAP``), their mean ± sample sd, the seeds
    where recomputing helped, and (students) the mean change of their queries' mAP on the teacher's gallery."""
    _, runs = _dataset(result, dataset, source)
    seeds = sorted({f["seed"] for finals in runs.values() for f in finals})
    rows = []
    for variant in variant_order(runs):
        if any("exported_mAP" not in f for f in runs[variant]):
            raise ResultsError(f"{source}: {dataset}/{variant} lacks \"exported_mAP\"; write it with "
                               "`python -m training.batchnorm_reevaluation`")
        gains = {f["seed"]: f["mAP"] - f["exported_mAP"] for f in runs[variant]}
        values = list(gains.values())
        cross = [f["asymmetric"]["mAP"] - f["exported_asymmetric"]["mAP"] for f in runs[variant]
                 if "exported_asymmetric" in f]
        rows.append([_label(variant), *(f"{gains[s]:+.2f}" if s in gains else "" for s in seeds),
                     mean_sd(values) if len(values) > 1 else "",
                     f"{sum(v > 0 for v in values)} of {len(values)}",
                     f"{statistics.fmean(cross):+.2f} ({sum(c > 0 for c in cross)} of {len(cross)} up)" if cross
                     else ""])
    header = ["variant", *(f"seed {s}" for s in seeds), "mean ± sd", "seeds where it helped",
              "queries on the teacher's gallery: mean change"]
    return "\n".join(markdown_table(header, rows))


def _fold_runs(results: list[dict[str, Any]], folds: tuple[str, ...], sources: tuple[str, ...]
               ) -> list[dict[str, dict[int, float]]]:
    """Per fold, {variant: {seed: mAP}} merged from every file that holds dataset ``folds[i]`` (files may
    share runs, e.g. the teacher and CDD student beside a study; a run two files give different mAPs is an
    error naming both)."""
    out = []
    for fold in folds:
        holders = [(r, s) for r, s in zip(results, sources, strict=True) if fold in (r.get("runs") or {})]
        if not holders:
            raise ResultsError(f"no file of {list(sources)} holds dataset {fold!r}; {_REGENERATE}")
        merged: dict[str, dict[int, float]] = {}
        seen_in: dict[tuple[str, int], str] = {}
        for result, source in holders:
            for variant, finals in result["runs"][fold].items():
                for final in finals:
                    key = (variant, final["seed"])
                    known = merged.setdefault(variant, {}).get(final["seed"])
                    if known is not None and known != final["mAP"]:
                        raise ResultsError(f"{fold}/{variant} seed {final['seed']}: mAP {known} in {seen_in[key]} "
                                           f"but {final['mAP']} in {source}; collect both from the same runs")
                    merged[variant][final["seed"]] = final["mAP"]
                    seen_in.setdefault(key, source)
        out.append(merged)
    return out


def fold_table(results: list[dict[str, Any]], folds: tuple[str, ...], sources: tuple[str, ...],
               reference: str = "cdd") -> str:
    """One comparison over several class folds of a dataset (same seeds, same settings, other held-out
    classes): per variant, ``reference`` minus it averaged over the seeds within each fold, then per seed the
    mean over the folds of that seed's differences, the mean ± sample sd of those per-seed means, their
    standard error (sd / sqrt(seeds)) and the (fold, seed) pairs where ``reference`` is ahead. Only seeds that
    every fold ran for both runs count."""
    by_fold = _fold_runs(results, folds, sources)
    if any(reference not in runs for runs in by_fold):
        raise ResultsError(f"{list(sources)}: some fold lacks {reference!r} runs; {_REGENERATE}")
    who = REFERENCE_WHO.get(reference, reference)
    variants = variant_order({v for runs in by_fold for v in runs if v != reference and all(v in r for r in by_fold)})
    rows = []
    seeds_shown: list[int] = []
    for variant in variants:
        seeds = sorted(set.intersection(*(set(r[variant]) & set(r[reference]) for r in by_fold)))
        if len(seeds) < 2:
            raise ResultsError(f"{list(sources)}: {variant} and {reference} share {len(seeds)} seed(s) over every "
                               f"fold; a paired comparison needs at least 2; {_REGENERATE}")
        diffs = [[r[reference][s] - r[variant][s] for s in seeds] for r in by_fold]  # [fold][seed]
        per_seed = [statistics.fmean(column) for column in zip(*diffs, strict=True)]
        seeds_shown = seeds_shown or seeds
        if seeds != seeds_shown:
            raise ResultsError(f"{list(sources)}: {variant} ran on seeds {seeds}, other variants on {seeds_shown}; "
                               f"run the missing seeds; {_REGENERATE}")
        ahead = sum(d > 0 for fold in diffs for d in fold)
        rows.append([_label(variant), *(mean_sd(fold) for fold in diffs), *(f"{d:+.2f}" for d in per_seed),
                     mean_sd(per_seed), f"{statistics.stdev(per_seed) / math.sqrt(len(per_seed)):.2f}",
                     f"{ahead} of {len(seeds) * len(folds)}"])
    header = ["variant", *(f"{who} minus it, fold {i}: mean ± sd over seeds" for i in range(len(folds))),
              *(f"seed {s}: mean over folds" for s in seeds_shown), "mean ± sd over seeds",
              "standard error of the mean", "(fold, seed) pairs ahead"]
    return "\n".join(markdown_table(header, rows))


def fold_map_table(results: list[dict[str, Any]], folds: tuple[str, ...], sources: tuple[str, ...]) -> str:
    """Per variant, its mAP in each class fold (mean ± sample sd over the seeds every fold ran), so the folds'
    difficulty can be read beside the paired differences of `fold_table`."""
    by_fold = _fold_runs(results, folds, sources)
    variants = variant_order({v for runs in by_fold for v in runs if all(v in r for r in by_fold)})
    seeds = sorted(set.intersection(*(set(runs[v]) for runs in by_fold for v in variants)))
    if len(seeds) < 2:
        raise ResultsError(f"{list(sources)}: every fold and variant share {len(seeds)} seed(s); {_REGENERATE}")
    rows = [[_label(v), *(f"{statistics.fmean(r[v][s] for s in seeds):.2f} ± "
                          f"{statistics.stdev(r[v][s] for s in seeds):.2f}" for r in by_fold)] for v in variants]
    header = ["variant", *(f"fold {i}: mAP % (seeds {seeds[0]}-{seeds[-1]})" for i in range(len(folds)))]
    return "\n".join(markdown_table(header, rows))
