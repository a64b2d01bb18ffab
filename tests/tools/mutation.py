"""`make mutation`: apply each targeted mutant of tests/tools/mutants.py to a copy of the repository, run the tests
named for it, and report which mutants the tests kill.

A mutant is one exact edit (a code snippet replaced by another) at a named place in a mechanism users rely
on. Snippets anchor the edit, not line numbers, so a mutant survives unrelated edits of its file; when its
snippet is no longer found exactly once it is reported as ``stale`` (to be re-anchored), never applied
elsewhere. Outcomes:

- ``killed``: the tests failed (or hung past ``--timeout``) with the mutant in place;
- ``survived``: the tests passed with it: either a test is missing, or the mutant is equivalent (see
  docs/testing.md for each surviving one and why);
- ``stale``: the snippet is not in the file exactly once;
- ``baseline failed``: the same tests fail without any mutant (the result would mean nothing).

The working tree is never edited: the tracked and untracked-but-not-ignored files are copied into a
temporary folder once, each mutant is applied there, its tests run there (``PYTHONPATH`` points at the
copy, ahead of the editable install) and the file is restored before the next one. Exit code 0 when no
mutant survived and none was stale, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mutants import MUTANTS, Mutant  # noqa: E402 - tests/tools/ is not a package

ROOT = Path(__file__).resolve().parents[2]


def _copy_repository(destination: Path) -> None:
    """Tracked and untracked (not ignored) files of the repository, as they are in the working tree."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def _run_tests(copy: Path, tests: Sequence[str], timeout: float) -> tuple[str, float, str]:
    """("passed" | "failed" | "timeout" | "error", seconds, last lines) of pytest on ``tests`` in ``copy``."""
    env = {**os.environ, "PYTHONPATH": str(copy)}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    start = time.monotonic()
    try:
        done = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - start, ""
    tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-3:])
    outcome = {0: "passed", 1: "failed"}.get(done.returncode, "error")
    if done.returncode == 5:
        outcome = "error"  # no tests collected: the mutant's test list is wrong
    return outcome, time.monotonic() - start, tail


def _apply(copy: Path, mutant: Mutant) -> str | None:
    """Apply ``mutant`` in ``copy``; returns the original text, or None when the snippet is not there once."""
    path = copy / mutant.path
    if not path.is_file():
        return None
    original = path.read_text()
    if original.count(mutant.find) != 1:
        return None
    path.write_text(original.replace(mutant.find, mutant.replace))
    return original


def run(mutants: Sequence[Mutant], timeout: float, baseline: bool) -> list[dict[str, object]]:
    results: list[dict[str, object]] = []
    baselines: dict[tuple[str, ...], str] = {}
    with tempfile.TemporaryDirectory(prefix="cdd-mutation-") as tmp:
        copy = Path(tmp)
        _copy_repository(copy)
        for number, mutant in enumerate(mutants, 1):
            row: dict[str, object] = {"name": mutant.name, "mechanism": mutant.mechanism, "path": mutant.path,
                                      "tests": list(mutant.tests), "note": mutant.note}
            if baseline and mutant.tests not in baselines:
                baselines[mutant.tests] = _run_tests(copy, mutant.tests, timeout)[0]
            original = _apply(copy, mutant)
            if original is None:
                row["outcome"] = "stale"
            elif baseline and baselines[mutant.tests] != "passed":
                (copy / mutant.path).write_text(original)
                row["outcome"] = "baseline failed"
            else:
                try:
                    outcome, seconds, tail = _run_tests(copy, mutant.tests, timeout)
                finally:
                    (copy / mutant.path).write_text(original)
                row.update(seconds=round(seconds, 1), tests_said=tail,
                           outcome={"passed": "survived", "failed": "killed", "timeout": "killed"}.get(outcome,
                                                                                                        "error"))
            print(f"[{number}/{len(mutants)}] {row['outcome']:>15}  {mutant.name}  ({mutant.path})", flush=True)
            results.append(row)
    return results


def summary(results: Sequence[dict[str, object]]) -> str:
    counts = {k: sum(r["outcome"] == k for r in results) for k in ("killed", "survived", "stale", "baseline failed",
                                                                  "error")}
    scored = counts["killed"] + counts["survived"]
    score = f"{100 * counts['killed'] / scored:.0f}%" if scored else "n/a"
    lines = [f"mutation score {score}: {counts['killed']} killed / {scored} applied; " +
             ", ".join(f"{v} {k}" for k, v in counts.items() if k not in ("killed",) and v)]
    lines += [f"  SURVIVED {r['name']} ({r['path']}): {r['note']}" for r in results if r["outcome"] == "survived"]
    lines += [f"  STALE    {r['name']} ({r['path']}): snippet not found exactly once" for r in results
              if r["outcome"] == "stale"]
    lines += [f"  {str(r['outcome']).upper():8} {r['name']}: {r.get('tests_said', '')}" for r in results
              if r["outcome"] in ("error", "baseline failed")]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated texts: run the mutants whose name or "
                                                   "mechanism contains one of them (default: all)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per test run; longer = killed")
    parser.add_argument("--no-baseline", action="store_true", help="skip running each test list unmutated first")
    parser.add_argument("--list", action="store_true", help="print the mutants and whether each still applies")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "mutation.json", help="JSON results")
    args = parser.parse_args(argv)
    terms = [t.strip() for t in args.only.split(",") if t.strip()] or [""]
    chosen = [m for m in MUTANTS if any(t in m.name or t in m.mechanism for t in terms)]
    if args.list:
        for m in chosen:
            text = (ROOT / m.path).read_text() if (ROOT / m.path).is_file() else ""
            print(f"{'applies' if text.count(m.find) == 1 else 'STALE':>8}  {m.mechanism:<22} {m.name}")
        return 0
    results = run(chosen, args.timeout, baseline=not args.no_baseline)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(summary(results))
    print(f"results: {args.out}")
    return 0 if all(r["outcome"] == "killed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
