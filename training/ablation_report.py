"""Summaries of an ablation, paired by seed: every variant against the CDD student on the same seed and data.

``results[dataset][variant]`` is a list of final-metrics dicts, each carrying the ``seed`` it ran with.
The spread between seeds of one variant is often larger than the difference between variants on the
same seed, so comparisons are made seed by seed: per-seed differences, their mean and sample standard
deviation, and a verdict only when every seed agrees.
"""

from __future__ import annotations

import statistics
from typing import Any

__all__ = ["NAMES", "REFERENCES", "paired", "summarise", "format_markdown"]

NAMES = {
    "teacher": "(a) teacher",
    "cdd": "(b) CDD student",
    "static": "(c) static student, same arch, scratch",
    "no-grg": "(d) CDD without gradient resetting",
    "prune-distill": "(e) prune-then-distill, CDD's channels",
    "l1-distill": "(f) standard pruning (filter L1), then distill",
    "born-again": "(g) born-again, full width",
    "refine": "(h) CDD + refine stage",
    "prune-distill-long": "(e+) prune-then-distill, as many epochs as (h)",
    "refine-from-teacher": "(h0) refine stage from the sliced teacher (CDD's parameterisation)",
    "refine-plain": "(hp) refine stage from CDD's weights, plain slim form",
    "l1-refine-from-teacher": "(f0) filter-L1 channels, refine stage from the sliced teacher (CDD's parameterisation)",
}
# Runs every other variant is compared with, paired by seed: "<reference>_minus" in the summary.
REFERENCES = ("cdd", "refine", "refine-from-teacher", "refine-plain")


def _name(variant: str) -> str:
    return NAMES.get(variant, f"CDD study: {variant}")


def _spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def paired(finals: list[dict[str, Any]], others: list[dict[str, Any]], key: str = "mAP") -> dict[str, Any]:
    """Per-seed ``finals[key] - others[key]`` over the seeds both lists hold: {"seeds", "diffs", "mean", "std",
    "wins"} (wins = seeds where the difference is > 0); empty diffs when no seed is shared."""
    theirs = {f["seed"]: f[key] for f in others}
    seeds = [f["seed"] for f in finals if f["seed"] in theirs]
    diffs = [round(f[key] - theirs[f["seed"]], 3) for f in finals if f["seed"] in theirs]
    out: dict[str, Any] = {"seeds": seeds, "diffs": diffs, "wins": sum(d > 0 for d in diffs)}
    if diffs:
        out.update({"mean": statistics.fmean(diffs), "std": statistics.stdev(diffs) if len(diffs) > 1 else 0.0})
    return out


def summarise(results: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Per dataset and variant: spread of mAP and rank-1, mean params and FLOPs, and for each reference run
    present (:data:`REFERENCES`: the CDD student, the refined student, the refine stage from the teacher or in
    the plain form) the paired differences reference minus the variant (``cdd_minus``, ``refine_minus``,
    ``refine-from-teacher_minus``, ``refine-plain_minus``)."""
    out: dict[str, Any] = {}
    for dataset, variants in results.items():
        for variant, finals in variants.items():
            entry = {
                "seeds": len(finals),
                "mAP": _spread([f["mAP"] for f in finals]),
                "rank1": _spread([f["rank1"] for f in finals]),
                "params": statistics.fmean(f["params"] for f in finals),
                "flops": statistics.fmean(f["flops"] for f in finals),
                "flops_reduction": statistics.fmean(f["flops_reduction"] for f in finals),
            }
            for reference in REFERENCES:
                if variant != reference and variants.get(reference):
                    entry[f"{reference}_minus"] = paired(variants[reference], finals)
            out.setdefault(dataset, {})[variant] = entry
    return out


def _verdict(variant: str, diff: dict[str, Any]) -> str:
    n = len(diff["diffs"])
    per_seed = ", ".join(f"{d:+.2f}" for d in diff["diffs"])
    if n < 2:
        return f"CDD vs {_name(variant)}: {per_seed or 'no shared seed'} on a single seed (no spread, no verdict)"
    if diff["wins"] == n:
        word = "beats"
    elif diff["wins"] == 0 and all(d < 0 for d in diff["diffs"]):
        word = "loses to"
    else:
        word = f"is ahead on {diff['wins']} of {n} seeds against"
    return (f"CDD {word} {_name(variant)}: paired by seed {per_seed}; mean {diff['mean']:+.2f}, "
            f"sd {diff['std']:.2f} mAP points")


def format_markdown(summary: dict[str, Any]) -> str:
    """Per dataset: a table of every variant (mAP, rank-1, params, FLOPs, FLOPs cut, and the paired CDD
    difference), then one plain sentence per baseline."""
    lines = []
    for dataset, variants in summary.items():
        lines += [f"### {dataset}", "",
                  "| variant | seeds | mAP % | rank-1 % | params | FLOPs (MACs) | FLOPs cut | CDD minus it, per seed "
                  "| mean ± sd |",
                  "|---|---:|---:|---:|---:|---:|---:|---|---:|"]
        order = [v for v in NAMES if v in variants] + sorted(v for v in variants if v not in NAMES)
        for variant in order:
            v = variants[variant]
            diff = v.get("cdd_minus")
            per_seed = " / ".join(f"{d:+.2f}" for d in diff["diffs"]) if diff else ""
            mean = f"{diff['mean']:+.2f} ± {diff['std']:.2f}" if diff and diff["diffs"] else ""
            lines.append(f"| {_name(variant)} | {v['seeds']} | {v['mAP']['mean']:.2f} ± {v['mAP']['std']:.2f} | "
                         f"{v['rank1']['mean']:.2f} ± {v['rank1']['std']:.2f} | {v['params']:,.0f} | "
                         f"{v['flops']:,.0f} | {v['flops_reduction']:.1f}% | {per_seed} | {mean} |")
        lines.append("")
        for variant in order:
            if variants[variant].get("cdd_minus"):
                lines.append(f"- {_verdict(variant, variants[variant]['cdd_minus'])}")
        lines.append("")
    return "\n".join(lines)
