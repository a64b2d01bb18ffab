"""Re-measure an ablation's finished runs with BatchNorm statistics recomputed for their final weights.

    python -m training.batchnorm_reevaluation --runs runs/ablation --dataset synthetic \\
        --out docs/ablation-synthetic-recomputed-bn.json

Reads every finished run ``RUNS/DATASET/seed<N>/<variant>`` that ``make ablation`` left (config.json,
checkpoint.pt, metrics.json) and evaluates its final network twice: as exported (running statistics; this must
reproduce the run's own final mAP, else it stops, naming the run) and on a copy whose BatchNorm statistics are
recomputed from the first ``BN_RECALIBRATION_BATCHES`` training batches of the last epoch's order, with their
mixed copies when the run trained with them (`training.weight_averaging.recalibrate_batchnorm`). It writes an
ablation results file of the recomputed results (each run's final metrics with mAP, rank-1 and a student's
queries on its teacher's gallery replaced, the exported ones kept as ``exported_mAP``, ``exported_rank1``,
``exported_asymmetric``) with the same paired-by-seed summary as ``make ablation``, so the ablation tables
render it. Nothing is written into the run dirs. Runs already in OUT are kept (resume).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cdd_common.atomic_file import write_text_atomic

__all__ = ["reevaluate_run", "main"]

_SEED_DIR = re.compile(r"seed(\d+)")


def reevaluate_run(run: Path) -> dict[str, Any]:
    """The final metrics of finished run dir ``run`` with mAP / rank-1 measured on recomputed BatchNorm
    statistics, plus ``exported_mAP`` / ``exported_rank1`` (the weights as exported). Raises ValueError when
    the exported network does not reproduce the run's recorded final mAP."""
    from training.checkpoint import load_checkpoint
    from training.config import TrainConfig
    from training.distributed import init_distributed
    from training.trainer import Trainer

    metrics = json.loads((run / "metrics.json").read_text())
    cfg = TrainConfig.from_dict(json.loads((run / "config.json").read_text()), str(run / "config.json"))
    trainer = Trainer(cfg, init_distributed("cpu"))
    trainer._load_state(load_checkpoint(run / "checkpoint.pt", kind=cfg.run.kind))
    net = trainer._deploy_net()[0]
    exported = trainer._evaluate(net)
    recorded = metrics["final"]
    if exported["mAP"] != recorded["mAP"]:
        raise ValueError(f"{run}: the final weights measure mAP {exported['mAP']} here, the run recorded "
                         f"{recorded['mAP']}; re-evaluate on the machine and code that trained it")
    fresh = trainer._evaluate_recomputed(net, cfg.run.epochs - 1)  # the last epoch's batches, as the trainer
    result = {**recorded, "mAP": fresh["mAP"], "rank1": fresh["rank1"], "exported_mAP": exported["mAP"],
              "exported_rank1": exported["rank1"]}
    if isinstance(fresh.get("asymmetric"), dict):  # students: their queries on the (unchanged) teacher's gallery
        result.update(asymmetric=fresh["asymmetric"], exported_asymmetric=exported["asymmetric"])
    return result


def _finished_runs(root: Path) -> list[tuple[int, str, Path]]:
    runs = []
    for seed_dir in sorted(root.iterdir()) if root.is_dir() else []:
        match = _SEED_DIR.fullmatch(seed_dir.name)
        if not match:
            continue
        for run in sorted(p for p in seed_dir.iterdir() if (p / "checkpoint.pt").is_file()):
            if "final" in json.loads((run / "metrics.json").read_text()):
                runs.append((int(match.group(1)), run.name, run))
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    from training.ablation_report import summarise
    from training.results.stamp import run_stamp

    parser = argparse.ArgumentParser(prog="python -m training.batchnorm_reevaluation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True, help="the ablation's runs folder (make ablation's --runs)")
    parser.add_argument("--dataset", required=True, help="the dataset folder under it (synthetic, animal-mnist)")
    parser.add_argument("--out", required=True, help="results file to write (ablation format)")
    args = parser.parse_args(argv)
    root, out = Path(args.runs) / args.dataset, Path(args.out)
    runs = _finished_runs(root)
    if not runs:
        print(f"no finished run under {root}/seed<N>/<variant>; run `make ablation` (or python -m "
              f"training.ablation --runs {args.runs}) first", file=sys.stderr)
        return 2
    done: dict[str, list[dict[str, Any]]] = {}
    if out.is_file():
        done = json.loads(out.read_text()).get("runs", {}).get(args.dataset, {})
    results = {args.dataset: done}
    for seed, variant, run in runs:
        if any(f["seed"] == seed for f in done.get(variant, [])):
            continue
        try:
            final = {**reevaluate_run(run), "seed": seed}
        except ValueError as exc:
            print(f"batchnorm_reevaluation: {exc}", file=sys.stderr)
            return 2
        done.setdefault(variant, []).append(final)
        print(f"{run}: mAP {final['exported_mAP']:.3f} as exported, {final['mAP']:.3f} with recomputed "
              "BatchNorm statistics", flush=True)
        body = {"summary": summarise(results), "runs": results, "stamp": run_stamp()}
        write_text_atomic(out, json.dumps(body, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
