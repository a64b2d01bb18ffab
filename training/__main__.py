"""`cdd-train` / `python -m training`: train a teacher or a CDD student from a preset or TOML file.

    cdd-train --preset demo-teacher
    cdd-train --config my.toml --set optim.lr=0.02 --set run.epochs=60 --resume
    cdd-train --preset demo-teacher --quiet            (no progress bars: --set run.progress=false)
    torchrun --nproc_per_node=2 -m training --preset demo-teacher
    cdd-train import-teacher --checkpoint FILE --format torchvision|timm|fast-reid ...   (see --help)

A run folder (run.out_dir) that already holds a run is refused unless --resume continues it or --force
starts over. The first log lines say which classes or identities went to training and which to test.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from collections.abc import Sequence

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    from training.presets_help import preset_lines, preset_names

    parser = argparse.ArgumentParser(prog="cdd-train", description=__doc__, epilog="presets:\n" + preset_lines(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", help=f"preset in training/presets: {', '.join(preset_names())}")
    source.add_argument("--config", help="TOML config file (may `extends = \"<preset>\"`)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value; repeatable")
    parser.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint.pt if present")
    parser.add_argument("--force", action="store_true",
                        help="start over in a run folder that holds an earlier run (its run files are deleted)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars (the same as --set run.progress=false; cdd-index's --quiet)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    missing = [name for name in ("torch", "onnx", "matplotlib", "tqdm") if importlib.util.find_spec(name) is None]
    if missing:
        print(f"cdd-train: needs the [train] extra ({', '.join(missing)} not installed); install it with "
              "pip install 'cdd-retrieval[train]' (from a checkout: pip install -e '.[train]')", file=sys.stderr)
        return 2
    if argv[:1] == ["import-teacher"]:  # a model trained elsewhere as a teacher run dir
        from training.teacher_import import main as import_teacher

        return import_teacher(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    from training.config import ConfigError, load_config

    try:
        quiet = ["run.progress=false"] if args.quiet else []
        cfg = load_config(args.preset or args.config, [*args.overrides, *quiet])
    except ConfigError as exc:
        print(f"cdd-train: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        import json

        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    from training.data.split_summary import log_split
    from training.run_folder import claim_run_folder

    try:
        log_split(cfg.data.dataset, cfg.data.root)
        claim_run_folder(cfg.run.out_dir, args.resume, args.force)
        from training.trainer import build_trainer

        trainer = build_trainer(cfg, resume=args.resume)
        ctx = trainer.ctx
        final = trainer.fit()
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"cdd-train: {exc}", file=sys.stderr)
        return 2
    if ctx.is_main and final:
        print(f"{cfg.run.kind}: mAP {final['mAP']:.2f}%  rank-1 {final['rank1']:.2f}%  "
              f"params {final['params']:,}  FLOPs {final['flops']:,}  -> {cfg.run.out_dir}")
        if "asymmetric" in final:
            print(f"{cfg.run.kind} queries on the teacher's gallery: mAP {final['asymmetric']['mAP']:.2f}%  rank-1 "
                  f"{final['asymmetric']['rank1']:.2f}%  (teacher/teacher mAP {final['teacher']['mAP']:.2f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
