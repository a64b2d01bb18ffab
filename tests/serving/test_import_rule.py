"""The serving/training import rule (docs/architecture.md): serving never imports export, imports from training only
its torch-free data layouts, records and metrics, lazily; a server on ONNX Runtime never imports torch."""

from __future__ import annotations

import ast
import socket
import subprocess
import sys
from pathlib import Path

from serving.backends import create_engine
from serving.bundle import load_bundle
from serving.index.build import build_index, items_from_folder

SERVING = Path(__file__).resolve().parents[2] / "serving"
ALLOWED_TRAINING = {"training.data.layouts", "training.data.records", "training.metrics"}


def _imports(tree: ast.Module) -> list[tuple[str, bool]]:
    """(module, at module level) for every import statement in the tree."""
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, id(node) in top))
    return found


def test_serving_source_imports_only_the_allowed_training_modules_lazily() -> None:
    problems = []
    files = [p for p in SERVING.rglob("*.py") if "_proto" not in p.parts]
    assert len(files) > 20
    for path in files:
        for module, top_level in _imports(ast.parse(path.read_text(), str(path))):
            root = module.split(".")[0]
            if root == "export":
                problems.append(f"{path.name} imports {module}")
            elif root == "training" and (module not in ALLOWED_TRAINING or top_level):
                problems.append(f"{path.name} imports {module}{' at module level' if top_level else ''}")
    assert not problems, problems


_SERVE_AND_REPORT = """
import sys, threading
from pathlib import Path
import serving
from serving.client import RetrievalClient
from serving.config import ServeConfig
from serving.server import serve

bundle, index, image, port = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
config = ServeConfig(bundle=bundle, index=index, port=port, backend="onnxruntime-cpu")
stop, ready = threading.Event(), threading.Event()
thread = threading.Thread(target=serve, args=(config, stop, ready))
thread.start()
assert ready.wait(60), "server did not start"
with RetrievalClient(f"127.0.0.1:{port}") as client:
    hits = client.search(image.read_bytes(), k=1)
stop.set()
thread.join(30)
print("hit", hits[0].id)
print("modules", " ".join(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "training", "export"))))
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_onnxruntime_server_never_imports_torch_training_or_export(
    tiny_bundle: Path, gallery_images: Path, tmp_path: Path
) -> None:
    manifest = load_bundle(tiny_bundle)
    engine = create_engine(tiny_bundle, manifest, backend="onnxruntime-cpu")
    index, _ = build_index(engine, manifest, items_from_folder(gallery_images), progress=False)
    index.save(tmp_path / "index")
    query = sorted(gallery_images.iterdir())[0]
    command = [sys.executable, "-c", _SERVE_AND_REPORT, str(tiny_bundle), str(tmp_path / "index"), str(query),
               str(_free_port())]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=SERVING.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = dict(line.split(" ", 1) if " " in line else (line, "") for line in result.stdout.splitlines())
    assert lines["hit"] == query.name  # the server really answered
    assert lines["modules"] == "", f"the ONNX Runtime server imported {lines['modules']}"
