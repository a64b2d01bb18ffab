"""The import rule's shared half (docs/architecture.md): `cdd_common` holds the one copy of what training,
export and serving all need, imports only the standard library, numpy and Pillow, and no side keeps a copy."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import cdd_common.image_decoding
import serving.preprocess
import training.data.transforms
from serving.bundle import DECODE_RULE, Preprocess

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / "cdd_common"
ALLOWED_ROOTS = {"numpy", "PIL", *sys.stdlib_module_names}


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            roots.add("cdd_common")  # a relative import stays inside the package
    return roots


def test_the_shared_package_imports_only_the_stdlib_numpy_and_pillow() -> None:
    files = sorted(SHARED.glob("*.py"))
    assert {p.stem for p in files} >= {"atomic_file", "json_document", "image_decoding", "config_overrides"}
    found = {p.name: sorted(_imported_roots(p) - ALLOWED_ROOTS - {"cdd_common"}) for p in files}
    assert {name: roots for name, roots in found.items() if roots} == {}


def test_importing_every_shared_module_loads_no_torch_training_export_or_serving() -> None:
    modules = " ".join(f"cdd_common.{p.stem}" for p in sorted(SHARED.glob("*.py")) if p.stem != "__init__")
    script = (f"import importlib, sys\nfor name in {modules.split()!r}:\n    importlib.import_module(name)\n"
              "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
              "('torch', 'training', 'export', 'serving'))))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == ""


def test_no_side_keeps_its_own_copy() -> None:
    shared = {p.name for p in SHARED.glob("*.py")} - {"__init__.py"}
    copies = [str(p.relative_to(ROOT)) for side in ("training", "export", "serving")
              for p in (ROOT / side).rglob("*.py") if p.name in shared]
    assert copies == []


def test_training_and_serving_decode_with_the_one_rule_the_manifest_records() -> None:
    assert training.data.transforms.decode_rgb8 is cdd_common.image_decoding.decode_rgb8
    assert serving.preprocess.decode_rgb8 is cdd_common.image_decoding.decode_rgb8
    assert cdd_common.image_decoding.DECODE_RULE == DECODE_RULE == Preprocess().decode
    assert tuple(Preprocess().background) == cdd_common.image_decoding.DEFAULT_BACKGROUND


def test_training_imports_neither_serving_nor_export() -> None:
    found = {str(p.relative_to(ROOT)): sorted(_imported_roots(p) & {"serving", "export"})
             for p in (ROOT / "training").rglob("*.py")}
    assert {name: roots for name, roots in found.items() if roots} == {}
