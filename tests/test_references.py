"""The project stands alone: every markdown link, every ``docs/...`` file and every ``*.md`` file that code,
presets, tests or docs mention is a file in this repository, and no doc or code names a tracker issue."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_MENTION = re.compile(r"(?<![\w./<>{}*$@-])((?:[\w.-]+/)*[\w.-]+\.md|docs/[\w./-]*\.\w+)(?![\w/<>{}*-])")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_ISSUE = re.compile(r"\bissues? #?\d+\b", re.IGNORECASE)
_MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:work|home|root|Users)/[\w.-]+")
def _docs() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))] + [
        p for p in (ROOT / "CHANGELOG.md",) if p.is_file()]


def _code() -> list[Path]:
    files = [p for package in ("training", "export", "serving") for p in (ROOT / package).rglob("*")
             if p.suffix in (".py", ".toml") and "_proto" not in p.parts]
    return [*files, ROOT / "Makefile", ROOT / "pyproject.toml"]


def _test_docstrings() -> list[tuple[Path, str]]:
    """Tests make up file names for their fixtures; only what their module docstrings cite must exist."""
    return [(p, ast.get_docstring(ast.parse(p.read_text())) or "") for p in sorted((ROOT / "tests").rglob("*.py"))]


def _resolves(token: str, source: Path) -> bool:
    if token.split("/")[0].isupper():  # a placeholder folder a command is given (OUT/, RUN/)
        return True
    return any(candidate.exists() for candidate in (ROOT / token, source.parent / token, ROOT / "docs" / token))


def _missing_mentions(source: Path, text: str) -> list[str]:
    relative = source.relative_to(ROOT).as_posix()
    return [f"{relative} mentions {m.group(1)}" for m in _MENTION.finditer(text)
            if not _resolves(m.group(1), source)]


def test_every_markdown_link_resolves_to_a_file_in_the_repository() -> None:
    broken, checked = [], 0
    for doc in _docs():
        for match in _LINK.finditer(doc.read_text()):
            target = match.group(1).split("#")[0]
            if not target or re.match(r"[a-z]+:", target):
                continue
            checked += 1
            if not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)} links {target}")
    assert checked > 20
    assert not broken, broken


def test_every_docs_and_markdown_file_mentioned_exists() -> None:
    texts = [(p, p.read_text()) for p in [*_docs(), *_code()]] + _test_docstrings()
    assert sum(len(_MENTION.findall(text)) for _, text in texts) > 50
    missing = [line for path, text in texts for line in _missing_mentions(path, text)]
    assert not missing, missing


def test_a_missing_file_is_reported() -> None:
    assert _missing_mentions(ROOT / "README.md", "see NOT-HERE.md and docs/nothing-here.json, docs/method.md") == [
        "README.md mentions NOT-HERE.md", "README.md mentions docs/nothing-here.json"]


def test_no_doc_or_code_names_a_tracker_issue() -> None:
    found = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in [*_docs(), *_code()]
             for m in _ISSUE.finditer(p.read_text())]
    assert not found, found


def test_no_committed_text_names_a_path_of_the_machine_it_was_made_on() -> None:
    """Results files, docs and code say `bundles/demo`, not where one machine kept it."""
    folders = ("docs", "training", "export", "serving", "cdd_common", "tests", ".ci")
    files = [p for folder in folders for p in (ROOT / folder).rglob("*")
             if p.suffix in (".md", ".json", ".py", ".toml", ".txt", ".sh", "") and p.is_file()]
    top = ("README.md", "CHANGELOG.md", "Makefile", "pyproject.toml")
    files += [ROOT / name for name in top if (ROOT / name).is_file()]
    assert len(files) > 100
    found = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in files if "__pycache__" not in p.parts
             for m in _MACHINE_PATH.finditer(p.read_text(errors="replace"))]
    assert not found, found
