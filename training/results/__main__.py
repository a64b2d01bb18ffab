"""``python -m training.results`` (``make results``): the tables of README.md and docs/*.md from results files.

    python -m training.results render            # rewrite every <!-- results:NAME --> block
    python -m training.results render --check    # exit 1 naming each block that differs from its files
    python -m training.results collect --run runs/demo/student --out docs/results/demo-student.json
    python -m training.results stamp docs/benchmarks.json   # add a stamp (now, HEAD, this machine)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from cdd_common.atomic_file import write_text_atomic
from training.results.markers import MarkerError, replace_blocks
from training.results.registry import render_table
from training.results.run_files import collect_run, stamp_file
from training.results.stamp import StampError
from training.results.tables import ResultsError

__all__ = ["main", "documents", "render_documents"]


def documents(root: Path) -> list[Path]:
    """README.md and every markdown file under docs/: the files that may hold results blocks."""
    return [p for p in [root / "README.md", *sorted((root / "docs").rglob("*.md"))] if p.is_file()]


def render_documents(root: Path, check: bool) -> list[str]:
    """Render every results block under ``root``; with ``check`` write nothing. Returns one line per document
    whose blocks differ from what the results files render (``check``) or that was rewritten."""
    changed = []
    for path in documents(root):
        text = path.read_text(encoding="utf-8")
        relative = path.relative_to(root).as_posix()
        rendered = replace_blocks(text, lambda name: render_table(name, root), relative)
        if rendered != text:
            changed.append(relative)
            if not check:
                write_text_atomic(path, rendered)
    return changed


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.results", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    render = commands.add_parser("render", help="render every results block of README.md and docs/*.md")
    render.add_argument("--check", action="store_true", help="write nothing; exit 1 when a block is stale")
    render.add_argument("--root", type=Path, default=Path("."), help="repository root (default: .)")
    collect = commands.add_parser("collect", help="copy a finished run's metrics, config and stamp to a file")
    collect.add_argument("--run", type=Path, required=True, help="run folder (metrics.json, config.json)")
    collect.add_argument("--out", type=Path, required=True,
                         help="results file to write, e.g. docs/results/demo-student.json")
    collect.add_argument("--stamp-now", action="store_true",
                         help="stamp with now, HEAD and this machine when the run folder has no stamp.json")
    stamp = commands.add_parser("stamp", help="add a stamp (now, HEAD, this machine) to a results file")
    stamp.add_argument("file", type=Path)
    stamp.add_argument("--force", action="store_true", help="replace a stamp the file already has")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "render":
            changed = render_documents(args.root, args.check)
            if args.check and changed:
                print("results tables differ from their results files in: " + ", ".join(changed)
                      + "; run `make results` and commit the result", file=sys.stderr)
                return 1
            print(("rewrote " + ", ".join(changed)) if changed else "every results table is current")
        elif args.command == "collect":
            result = collect_run(args.run, args.stamp_now)
            write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
            print(f"wrote {args.out}")
        else:
            stamp_file(args.file, args.force)
            print(f"stamped {args.file}")
    except (MarkerError, ResultsError, StampError, OSError) as exc:
        print(f"results: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
