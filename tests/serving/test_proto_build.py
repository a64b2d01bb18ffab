"""The generated stubs in serving/_proto are exactly what serving.proto_build produces from protos/."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from serving import proto_build

grpc_tools = pytest.importorskip("grpc_tools", reason="grpcio-tools (dev extra) regenerates the stubs")

COMMITTED = Path(proto_build.__file__).resolve().parent / "_proto"


def _generated_with() -> str:
    text = (COMMITTED / "retrieval_pb2_grpc.py").read_text()
    match = re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", text)
    assert match, "retrieval_pb2_grpc.py has no GRPC_GENERATED_VERSION line; regenerate with `make proto`"
    return match.group(1)


def _installed_grpc_tools() -> str:
    from importlib.metadata import version

    return version("grpcio-tools")


def test_committed_stubs_equal_fresh_generation(tmp_path: Path) -> None:
    if _installed_grpc_tools() != _generated_with():
        pytest.skip(
            f"stubs were generated with grpcio-tools {_generated_with()}, this env has "
            f"{_installed_grpc_tools()}: byte comparison needs the same generator"
        )
    written = proto_build.generate(tmp_path)
    fresh = {p.name for p in tmp_path.iterdir() if p.is_file()}
    committed = {p.name for p in COMMITTED.iterdir() if p.is_file()}
    assert fresh == committed == {p.name for p in written}
    for name in sorted(fresh):
        assert (tmp_path / name).read_bytes() == (COMMITTED / name).read_bytes(), (
            f"serving/_proto/{name} is stale: run `python -m serving.proto_build` (make proto)"
        )


def test_grpc_module_imports_its_pb2_relatively() -> None:
    text = (COMMITTED / "retrieval_pb2_grpc.py").read_text()
    assert "from . import retrieval_pb2 as" in text
    assert "from cdd." not in text


def test_main_writes_to_out_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert proto_build.main(["--out", str(tmp_path / "gen")]) == 0
    names = sorted(p.name for p in (tmp_path / "gen").iterdir())
    assert names == ["__init__.py", "retrieval_pb2.py", "retrieval_pb2_grpc.py"]
    assert "retrieval_pb2.py" in capsys.readouterr().out


def test_missing_proto_root_is_reported(tmp_path: Path) -> None:
    with pytest.raises(proto_build.ProtoBuildError, match="proto file not found"):
        proto_build.generate(tmp_path / "out", proto_root=tmp_path / "nothing")


def test_serving_runtime_works_without_grpc_tools() -> None:
    """grpc_tools is blocked (as on a host without the dev extra); the server modules still import, and
    none of them pulls in torch, training or export."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'grpc_tools':\n"
        "            raise ImportError('grpc_tools blocked by the test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import serving._proto, serving.server, serving.grpc_servicer, serving.client\n"
        "banned = {'grpc_tools', 'torch', 'training', 'export'}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in banned)\n"
        "print(bad)\n"
        "raise SystemExit(1 if bad else 0)\n"
    )
    root = Path(proto_build.__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_stubs_describe_the_v1_service() -> None:
    from serving._proto import retrieval_pb2

    service = retrieval_pb2.DESCRIPTOR.services_by_name["Retrieval"]
    assert service.full_name == "cdd.v1.Retrieval"
    assert [m.name for m in service.methods] == [
        "Search",
        "SearchBatch",
        "Embed",
        "AddItems",
        "RemoveItems",
        "Stats",
    ]
