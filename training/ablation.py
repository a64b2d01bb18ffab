"""Ablation benchmark: the CDD student against every baseline a reviewer asks for, paired by seed.

For each dataset and seed it trains
  (a) the teacher,
  (b) the CDD student (indicators + lasso + retrieval-guided gradient resetting, paced by the shrink
      schedule, initialised from (a)),
  (c) a static student with exactly (b)'s final architecture, trained from scratch with the same
      distillation losses from the start (the paper's baseline),
  (d) CDD without gradient resetting (lasso + threshold only),
  (e) prune-then-distill: a static student with (b)'s final architecture, initialised from (a)'s weights
      sliced to it, distilled with the same losses and schedule (the baseline a practitioner would use),
  (f) standard pruning, then distill: (b)'s widths, but the channels a standard criterion picks from the
      teacher (largest filter L1 norms), initialised from the sliced teacher, same losses and schedule,
  (g) born-again: the teacher's full architecture initialised from it, same losses, mixed copy and schedule
      (the reference for any "better than its teacher" claim),
  (h) the refine stage: (b)'s architecture trained further from (b)'s final weights (preset demo-refine),
  (e+) prune-then-distill given as many epochs as (b) + (h), so (h) is compared at equal training length,
plus any named CDD study variant (:data:`STUDIES`: shrink schedule, initialisation, ratio), then writes
every run, per-seed differences CDD (and the refined student) minus each variant (mean and sample sd) and
mean/spread tables to
``OUT/ablation-<datasets>.{json,md}``, rewritten after every finished run, so a partial benchmark still
reports what it measured. Runs resume (each run dir is skipped once complete; one that holds a run with
other settings is refused, `training.run_identity`).

    python -m training.ablation --datasets synthetic --seeds 0 1 2 --out docs [--variants ...]
    python -m training.ablation --folder products=/data/products --seeds 0 1 2 3 4 --out my-ablation
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cdd_common.atomic_file import write_text_atomic
from training.ablation_report import NAMES, format_markdown, summarise
from training.pipeline import finished_metrics, run_stage

__all__ = ["DATASETS", "FOLDER_PROTOCOL", "folder_dataset", "VARIANTS", "EXTRA_VARIANTS", "STUDIES", "NAMES",
           "run_ablation", "summarise", "format_markdown",
           "write_l1_arch", "main"]

# Dataset presets: overrides applied to demo-teacher / demo-student. Sized for a 2-core CPU.
DATASETS: dict[str, list[str]] = {
    "synthetic": ['data.dataset="market1501"', 'data.root="data/synthetic-reid"', "run.epochs=12",
                  "run.eval_every=0", "optim.flat_until=5"],
    "animal-mnist": ['data.dataset="folder"', 'data.root="data/animal-mnist"', "data.height=32", "data.width=32",
                     "data.p=5", "data.k=8", "data.pad=4", "run.epochs=8", "run.eval_every=0",
                     "run.max_steps_per_epoch=60", "optim.flat_until=3", "cdd.grg_start_epoch=1"],
}
# animal-mnist's other class folds (`training.data.animal_mnist.FOLDS`): the same settings, other classes held out.
DATASETS.update({f"animal-mnist-fold-{fold}": [f'data.root="data/animal-mnist-fold-{fold}"'
                                               if item.startswith("data.root") else item
                                               for item in DATASETS["animal-mnist"]] for fold in range(1, 6)})
# A team's own class folders (`--folder [NAME=]PATH`): animal-mnist's protocol (8 epochs of 60 steps,
# resetting from epoch 1) at the demo's input size (64x32; `--set data.height=... data.width=...` changes it).
FOLDER_PROTOCOL: list[str] = [item for item in DATASETS["animal-mnist"]
                              if not item.startswith(("data.root", "data.height", "data.width"))]
VARIANTS = ("teacher", "cdd", "static", "no-grg", "prune-distill", "l1-distill", "born-again", "refine",
            "prune-distill-long")
# The refine stage (h): the CDD student's architecture trained further from its final weights (preset
# demo-refine) on the dataset's schedule, so (h) and (e) differ only in where they start; (e+) gets as many
# epochs as CDD + refine together.
LONG: dict[str, list[str]] = {"synthetic": ["run.epochs=24", "optim.flat_until=10"],
                              "animal-mnist": ["run.epochs=16", "optim.flat_until=6"]}
LONG.update({name: LONG["animal-mnist"] for name in DATASETS if name.startswith("animal-mnist-fold-")})
# CDD study variants: the CDD student with one setting changed (same teacher, seed and data).
STUDIES: dict[str, list[str]] = {
    "cdd-no-schedule": ['cdd.shrink_curve="none"', "cdd.fill_to_schedule=false"],
    "cdd-cubic": ['cdd.shrink_curve="cubic"'],
    "cdd-no-fill": ["cdd.fill_to_schedule=false"],
    "cdd-shrink-end-0.5": ["cdd.shrink_end=0.5"],  # the preset's setting since study v2 chose it
    "cdd-shrink-end-0.7": ["cdd.shrink_end=0.7"],  # the preset's setting before
    "cdd-shrink-end-0.9": ["cdd.shrink_end=0.9", "cdd.reset_decay_steps=5"],
    "cdd-scratch": ['model.init="scratch"'],
    "cdd-ratio-0.5": ["cdd.ratio=0.5"],
    "cdd-ratio-0.5-no-fill": ["cdd.ratio=0.5", "cdd.fill_to_schedule=false"],
    # with shrink_end 0.7: the learning rate flat until the final size (epoch 9 of 12), not epoch 5
    "cdd-lr-flat-to-final-size": ["cdd.shrink_end=0.7", "optim.flat_until=9"],
}
# Run on request only: the refine stage started from the teacher instead of CDD's weights (cdd.refine_init =
# "teacher"): (e)'s start and channels in the parameterisation CDD trains (full-width 3x3 conv + dense
# indicator, pruned rows held at zero, feature distillation over every inner channel), so (e) minus it
# separates the start from the parameterisation.
# "l1-refine-from-teacher": the same with (f)'s channels (filter L1 norms) instead of CDD's, so (h0) minus it is
# CDD's channel choice in that form.
# "refine-plain": the refine stage from CDD's final weights in the plain slim form (each block's conv, BN and
# indicator folded, `training.plain_fold`), so (e) minus it is the start alone in (e)'s own form.
EXTRA_VARIANTS = ("refine-from-teacher", "l1-refine-from-teacher", "refine-plain")
_NEEDS_CDD_ARCH = ("static", "prune-distill", "l1-distill", "refine", "prune-distill-long", *EXTRA_VARIANTS)


def write_l1_arch(cdd_arch: Path, teacher_run: Path, out: Path) -> Path:
    """The (f) baseline's arch.json: ``cdd_arch``'s kept counts, channels chosen by filter L1 norm from the
    teacher checkpoint in ``teacher_run`` (`training.pruning.l1_kept_channels`)."""
    from training.arch_spec import ArchSpec
    from training.checkpoint import load_checkpoint
    from training.pruning import l1_kept_channels

    spec = ArchSpec.load(cdd_arch)
    teacher = load_checkpoint(teacher_run / "checkpoint.pt", kind="teacher")["model"]
    kept = l1_kept_channels(teacher, spec, spec.kept_counts())
    spec.with_kept(kept).save(out)
    return out


def folder_dataset(spec: str) -> tuple[str, list[str]]:
    """``[NAME=]PATH`` of a class-folder image set -> (dataset name, its settings: :data:`FOLDER_PROTOCOL` with
    ``data.root`` = PATH). NAME defaults to the folder's name; it names the run folders and the tables, so it
    may not be a built-in dataset's. Raises ValueError naming the path or the name and the fix."""
    name, _, path = spec.rpartition("=")
    root = Path(path)
    name = name or root.resolve().name
    if not root.is_dir():
        raise ValueError(f"--folder {spec}: {root} is not a folder; pass the folder that holds the class folders "
                         "(ROOT/<class>/*.jpg, or ROOT/train/<class>/ and ROOT/test/<class>/)")
    if name in DATASETS:
        raise ValueError(f"--folder {spec}: the name {name!r} is a built-in dataset's; name it: --folder "
                         f"my-{name}={path}")
    return name, FOLDER_PROTOCOL + [f"data.root={json.dumps(str(root))}"]


def _variant_overrides(variant: str, run_root: Path, dataset: str = "synthetic") -> tuple[str, list[str]]:
    teacher = run_root / "teacher"
    if variant == "teacher":
        return "demo-teacher", [f'run.out_dir="{teacher}"']
    # The ablation measures CDD itself: the compatibility loss the demo preset adds for asymmetric retrieval
    # stays off here (docs/asymmetric.md compares it on vs off).
    common = [f'cdd.teacher_run="{teacher}"', f'run.out_dir="{run_root / variant}"', "loss.compat_weight=0"]
    if variant == "cdd":
        return "demo-student", common
    if variant in STUDIES:
        return "demo-student", common + STUDIES[variant]
    if variant == "no-grg":
        return "demo-student", common + ["cdd.gradient_reset=false"]
    if variant in ("refine", "refine-from-teacher", "refine-plain"):
        start = {"refine-from-teacher": ['cdd.refine_init="teacher"'],
                 "refine-plain": ['cdd.refine_form="plain"']}.get(variant, [])
        return "demo-refine", common + [f'cdd.refine_from="{run_root / "cdd"}"'] + start
    if variant == "l1-refine-from-teacher":
        return "demo-refine", common + [f'cdd.refine_from="{run_root / "l1-arch.json"}"', 'cdd.refine_init="teacher"']
    if variant in ("static", "prune-distill", "prune-distill-long"):
        init = "scratch" if variant == "static" else "teacher"
        return "demo-student", common + [f'cdd.static_arch="{run_root / "cdd" / "arch.json"}"',
                                         f'model.init="{init}"'] + (LONG.get(dataset, LONG["animal-mnist"])
                                                                     if variant.endswith("long") else [])
    if variant == "l1-distill":
        return "demo-student", common + [f'cdd.static_arch="{run_root / "l1-arch.json"}"', 'model.init="teacher"']
    if variant == "born-again":
        return "demo-student", common + [f'cdd.static_arch="{teacher / "arch.json"}"', 'model.init="teacher"']
    raise ValueError(f"unknown variant {variant!r}; valid: {[*VARIANTS, *EXTRA_VARIANTS, *STUDIES]}")


def _with_prerequisites(variants: Sequence[str]) -> list[str]:
    """``variants`` in run order, with the teacher and the CDD student added when another variant needs them."""
    wanted = set(variants) | {"teacher"}
    if wanted & set(_NEEDS_CDD_ARCH):
        wanted.add("cdd")
    known = [*VARIANTS, *EXTRA_VARIANTS, *STUDIES]
    unknown = sorted(wanted - set(known))
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; valid: {known}")
    return [v for v in known if v in wanted]


def run_ablation(datasets: Sequence[str], seeds: Sequence[int], runs_dir: Path, extra: Sequence[str] = (),
                 on_result: Callable[[dict[str, dict[str, list[dict[str, Any]]]]], None] | None = None,
                 variants: Sequence[str] = VARIANTS, collect_only: bool = False,
                 folders: dict[str, list[str]] | None = None) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Train every (dataset, seed, variant); returns results[dataset][variant] = [final metrics + "seed"].
    ``on_result`` sees the results so far after every finished run. ``collect_only``: train nothing, read
    the runs that already finished (a run still training, or never started, is left out). ``folders``: more
    datasets by name (:func:`folder_dataset`), run after ``datasets``."""
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    order = _with_prerequisites(variants)
    settings = {**DATASETS, **(folders or {})}
    for dataset in [*datasets, *(folders or {})]:
        if dataset not in settings:
            raise ValueError(f"unknown dataset {dataset!r}; valid: {sorted(DATASETS)}")
        for seed in seeds:
            run_root = runs_dir / dataset / f"seed{seed}"
            for variant in order:
                if collect_only:
                    final = finished_metrics(run_root / variant)
                    if final is not None:
                        results.setdefault(dataset, {}).setdefault(variant, []).append({**final, "seed": seed})
                    continue
                if variant in ("l1-distill", "l1-refine-from-teacher"):
                    write_l1_arch(run_root / "cdd" / "arch.json", run_root / "teacher", run_root / "l1-arch.json")
                preset, overrides = _variant_overrides(variant, run_root, dataset)
                final = run_stage(preset, settings[dataset] + [f"run.seed={seed}", "run.progress=false"]
                                  + overrides + list(extra))
                results.setdefault(dataset, {}).setdefault(variant, []).append({**final, "seed": seed})
                if on_result is not None:
                    on_result(results)
    if collect_only and on_result is not None:
        on_result(results)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.ablation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=None, choices=sorted(DATASETS),
                        help="built-in datasets (default: all of them, unless --folder is given)")
    parser.add_argument("--folder", action="append", default=[], metavar="[NAME=]PATH",
                        help="your own class folders (PATH/<class>/*.jpg, or PATH/train/<class>/ and "
                             "PATH/test/<class>/), run with animal-mnist's protocol at 64x32; repeatable; "
                             "another layout: --set data.dataset=market1501 (or dukemtmc, msmt17, veri776)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--runs", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS),
                        choices=[*VARIANTS, *EXTRA_VARIANTS, *STUDIES],
                        help="variants to run (the teacher and, for static baselines, the CDD student are added)")
    parser.add_argument("--name", default="", help="suffix of the results files (ablation-<datasets>[-NAME])")
    parser.add_argument("--collect-only", action="store_true",
                        help="train nothing: write the results files from the runs already finished under --runs")
    parser.add_argument("--stem", default="",
                        help="results file name without extension, instead of ablation-<datasets>[-NAME]")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    try:
        folders = dict(folder_dataset(spec) for spec in args.folder)
    except ValueError as exc:
        parser.error(str(exc))
    datasets = args.datasets if args.datasets is not None else ([] if folders else list(DATASETS))
    stem = args.stem or "ablation-" + "-".join([*datasets, *folders]) + (f"-{args.name}" if args.name else "")
    args.out.mkdir(parents=True, exist_ok=True)

    def write(results: dict[str, dict[str, list[dict[str, Any]]]]) -> None:
        summary = summarise(results)
        write_text_atomic(args.out / f"{stem}.json", json.dumps({"summary": summary, "runs": results}, indent=2))
        write_text_atomic(args.out / f"{stem}.md", format_markdown(summary))

    try:
        results = run_ablation(datasets, args.seeds, args.runs, args.overrides, on_result=write,
                               variants=args.variants, collect_only=args.collect_only, folders=folders)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:  # ConfigError and RunMismatch are ValueErrors
        print(f"ablation: {exc}", file=sys.stderr)
        return 2
    print(format_markdown(summarise(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
