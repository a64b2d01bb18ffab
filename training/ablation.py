"""Ablation benchmark: teacher vs CDD student vs static students vs CDD without gradient resetting.

For each dataset and seed it trains
  (a) the teacher,
  (b) the CDD student (indicators + lasso + retrieval-guided gradient resetting, initialised from (a)),
  (c) a static student with exactly (b)'s final architecture, trained from scratch with the same
      distillation losses from the start (the paper's baseline),
  (d) CDD without gradient resetting (lasso + threshold only),
  (e) prune-then-distill: a static student with (b)'s final architecture, initialised from (a)'s weights
      sliced to it, distilled with the same losses and schedule (the baseline a practitioner would use),
then writes mean and spread of mAP / rank-1 with params and FLOPs to ``OUT/ablation-<datasets>.{json,md}``,
rewritten after every finished run, so a partial benchmark still reports what it measured. Runs resume
(each run dir is skipped once complete), so a killed benchmark continues where it stopped.

    python -m training.ablation --datasets synthetic animal-mnist --seeds 0 1 2 --out docs
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from training.atomic_file import write_text_atomic
from training.pipeline import run_stage

__all__ = ["DATASETS", "VARIANTS", "NAMES", "run_ablation", "summarise", "format_markdown", "main"]

# Dataset presets: overrides applied to demo-teacher / demo-student. Sized for a 2-core CPU.
DATASETS: dict[str, list[str]] = {
    "synthetic": ['data.dataset="market1501"', 'data.root="data/synthetic-reid"', "run.epochs=12",
                  "run.eval_every=0", "optim.flat_until=5"],
    "animal-mnist": ['data.dataset="folder"', 'data.root="data/animal-mnist"', "data.height=32", "data.width=32",
                     "data.p=5", "data.k=8", "data.pad=4", "run.epochs=8", "run.eval_every=0",
                     "run.max_steps_per_epoch=60", "optim.flat_until=3", "cdd.grg_start_epoch=2"],
}
VARIANTS = ("teacher", "cdd", "static", "no-grg", "prune-distill")
NAMES = {"teacher": "(a) teacher", "cdd": "(b) CDD student", "static": "(c) static student, same arch, scratch",
         "no-grg": "(d) CDD without gradient resetting", "prune-distill": "(e) prune-then-distill, same arch"}


def _variant_overrides(variant: str, run_root: Path) -> tuple[str, list[str]]:
    teacher = run_root / "teacher"
    if variant == "teacher":
        return "demo-teacher", [f'run.out_dir="{teacher}"']
    common = [f'cdd.teacher_run="{teacher}"', f'run.out_dir="{run_root / variant}"']
    if variant == "cdd":
        return "demo-student", common
    if variant == "no-grg":
        return "demo-student", common + ["cdd.gradient_reset=false"]
    if variant in ("static", "prune-distill"):
        init = "scratch" if variant == "static" else "teacher"
        return "demo-student", common + [f'cdd.static_arch="{run_root / "cdd" / "arch.json"}"',
                                         f'model.init="{init}"']
    raise ValueError(f"unknown variant {variant!r}; valid: {VARIANTS}")


def run_ablation(datasets: Sequence[str], seeds: Sequence[int], runs_dir: Path, extra: Sequence[str] = (),
                 on_result: Callable[[dict[str, dict[str, list[dict[str, Any]]]]], None] | None = None,
                 ) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Train every (dataset, seed, variant); returns results[dataset][variant] = [final metrics per seed].
    ``on_result`` sees the results so far after every finished run."""
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for dataset in datasets:
        if dataset not in DATASETS:
            raise ValueError(f"unknown dataset {dataset!r}; valid: {sorted(DATASETS)}")
        for seed in seeds:
            run_root = runs_dir / dataset / f"seed{seed}"
            for variant in VARIANTS:
                preset, overrides = _variant_overrides(variant, run_root)
                final = run_stage(preset, DATASETS[dataset] + [f"run.seed={seed}", "run.progress=false"]
                                  + overrides + list(extra))
                results.setdefault(dataset, {}).setdefault(variant, []).append(final)
                if on_result is not None:
                    on_result(results)
    return results


def _spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def summarise(results: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Mean / std / min / max of mAP and rank-1, mean params and FLOPs, per dataset and variant."""
    out: dict[str, Any] = {}
    for dataset, variants in results.items():
        for variant, finals in variants.items():
            out.setdefault(dataset, {})[variant] = {
                "seeds": len(finals),
                "mAP": _spread([f["mAP"] for f in finals]),
                "rank1": _spread([f["rank1"] for f in finals]),
                "params": statistics.fmean(f["params"] for f in finals),
                "flops": statistics.fmean(f["flops"] for f in finals),
                "flops_reduction": statistics.fmean(f["flops_reduction"] for f in finals),
            }
    return out


def _verdict(variants: dict[str, Any], other: str) -> str:
    b, o = variants["cdd"]["mAP"], variants[other]["mAP"]
    diff = b["mean"] - o["mean"]
    spread = b["std"] + o["std"]
    if min(variants["cdd"]["seeds"], variants[other]["seeds"]) < 2:
        return (f"CDD vs {NAMES[other]}: {diff:+.2f} mAP points on a single seed (no spread, so no verdict)")
    if abs(diff) <= spread:
        word = "ties with"
    else:
        word = "beats" if diff > 0 else "loses to"
    return (f"CDD {word} {NAMES[other]}: {diff:+.2f} mAP points (means over {variants['cdd']['seeds']} vs "
            f"{variants[other]['seeds']} seeds; the two stds add up to {spread:.2f})")


def format_markdown(summary: dict[str, Any]) -> str:
    """One table per dataset: variant, mAP mean ± std, rank-1 mean ± std, params, FLOPs, FLOPs reduction;
    then a plain sentence comparing CDD with (c) and (e)."""
    lines = []
    for dataset, variants in summary.items():
        lines += [f"### {dataset}", "", "| variant | seeds | mAP % | rank-1 % | params | FLOPs (MACs) | FLOPs cut |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for variant in VARIANTS:
            if variant not in variants:
                continue
            v = variants[variant]
            lines.append(f"| {NAMES[variant]} | {v['seeds']} | {v['mAP']['mean']:.2f} ± {v['mAP']['std']:.2f} | "
                         f"{v['rank1']['mean']:.2f} ± {v['rank1']['std']:.2f} | {v['params']:,.0f} | "
                         f"{v['flops']:,.0f} | {v['flops_reduction']:.1f}% |")
        lines.append("")
        for other in ("static", "prune-distill"):
            if "cdd" in variants and other in variants:
                lines += [f"- {_verdict(variants, other)}"]
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.ablation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=sorted(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--runs", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    stem = "ablation-" + "-".join(args.datasets)
    args.out.mkdir(parents=True, exist_ok=True)

    def write(results: dict[str, dict[str, list[dict[str, Any]]]]) -> None:
        summary = summarise(results)
        write_text_atomic(args.out / f"{stem}.json", json.dumps({"summary": summary, "runs": results}, indent=2))
        write_text_atomic(args.out / f"{stem}.md", format_markdown(summary))

    results = run_ablation(args.datasets, args.seeds, args.runs, args.overrides, on_result=write)
    print(format_markdown(summarise(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
