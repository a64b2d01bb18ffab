"""Bundle publishing survives SIGKILL at any moment: ``--out`` always holds the old or the new bundle,
complete (verified by sha256), never a mix and never nothing.

Two real-subprocess tests: a publisher that replaces a bundle in a loop (both the folder-exchange and the
pointer layout), killed at random moments, so kills land inside the switch itself; and ``python -m export``
killed at random points of a real export.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tiny_runs import TinyRuns

from export.__main__ import main as export_main
from export.bundle_publish import exchange_supported, publish_dir
from serving.bundle import load_bundle, sha256_file

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

_PUBLISHER = """
import sys, tempfile
from pathlib import Path
import numpy as np
from export.bundle_publish import publish_dir
from serving.bundle import BatchRange, InputSpec, Manifest, OutputSpec, Preprocess, sha256_file, write_manifest

out, use_exchange = Path(sys.argv[1]), sys.argv[2] == "exchange"
payloads = [np.random.default_rng(seed).bytes(1 << 20) for seed in (0, 1)]  # two 1 MiB "models"
for step in range(10_000):
    staged = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    (staged / "model.onnx").write_bytes(payloads[step % 2])
    files = {"model.onnx": {"sha256": sha256_file(staged / "model.onnx"), "bytes": 1 << 20, "role": "onnxruntime"}}
    write_manifest(staged, Manifest(name=f"v{step % 2}", input=InputSpec(), output=OutputSpec(),
                   preprocess=Preprocess(), batch=BatchRange(), files=files, backends={"onnxruntime": "model.onnx"}))
    publish_dir(staged, out, use_exchange=use_exchange)
    print("published", step, flush=True)
"""


def _assert_complete(out: Path, checkpoints: set[str] | None = None, names: set[str] | None = None) -> None:
    """``out`` verifies (every listed file present with its sha256) and is one of the expected bundles."""
    manifest = load_bundle(out, verify=True)
    if names is not None:
        assert manifest.name in names, manifest.name
    if checkpoints is not None:
        assert manifest.provenance["checkpoint_sha256"] in checkpoints, manifest.provenance


@pytest.mark.parametrize("layout", ["exchange", "pointer"])
def test_killed_publisher_leaves_the_old_or_the_new_bundle(tmp_path: Path, layout: str) -> None:
    if layout == "exchange" and not exchange_supported(tmp_path):
        pytest.skip(f"{tmp_path}'s file system has no renameat2(RENAME_EXCHANGE); the pointer case covers it")
    out = tmp_path / "bundle"
    rng = np.random.default_rng(0)
    for _ in range(6):
        process = subprocess.Popen([sys.executable, "-c", _PUBLISHER, str(out), layout], env=ENV,
                                   stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().startswith("published")
        time.sleep(float(rng.uniform(0.0, 0.4)))  # several publishes happen in this time
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        _assert_complete(out, names={"v0", "v1"})
        assert out.is_symlink() == (layout == "pointer")


@pytest.mark.parametrize("use_exchange", [True, False], ids=["exchange", "pointer"])
def test_publish_replaces_and_leaves_nothing_behind(tmp_path: Path, use_exchange: bool) -> None:
    exchange = use_exchange and exchange_supported(tmp_path)
    out = tmp_path / "bundle"
    for content in (b"old", b"new", b"newer"):
        staged = tmp_path / ".bundle.partial-x"
        staged.mkdir()
        (staged / "file").write_bytes(content)
        assert publish_dir(staged, out, use_exchange=use_exchange) == out
        assert (out / "file").read_bytes() == content
    assert out.is_symlink() == (not exchange)
    if exchange:
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    else:  # the link and the one live version
        assert sorted(p.name for p in tmp_path.iterdir()) == [".bundle.versions", "bundle"]
        assert [p.name for p in (tmp_path / ".bundle.versions").iterdir()] == [out.resolve().name]


def test_a_plain_folder_moves_to_the_pointer_layout_where_folders_cannot_be_exchanged(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "file").write_bytes(b"old")
    staged = tmp_path / ".bundle.partial-x"
    staged.mkdir()
    (staged / "file").write_bytes(b"new")
    publish_dir(staged, out, use_exchange=False)
    assert out.is_symlink() and (out / "file").read_bytes() == b"new"
    assert [p.name for p in (tmp_path / ".bundle.versions").iterdir()] == [out.resolve().name]


@pytest.mark.slow
def test_killing_a_real_export_at_random_points(
    tiny_run_dir: TinyRuns, student_bundle, tmp_path: Path
) -> None:
    """The old bundle (the ResNet-50 student) is at --out; ``python -m export`` of the ResNet-18 student
    is killed once early (gates) and once while it writes its staged files, then runs to the end."""
    out = tmp_path / "bundle"
    shutil.copytree(student_bundle.bundle, out)
    old = load_bundle(out).provenance["checkpoint_sha256"]
    new = sha256_file(tiny_run_dir.student18 / "checkpoint.pt")
    assert old != new
    command = [sys.executable, "-m", "export", "--run", str(tiny_run_dir.student18), "--out", str(out),
               "--tensorrt", "off"]
    rng = np.random.default_rng(1)
    for wait_for_stage in (False, True):
        process = subprocess.Popen(command, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        if wait_for_stage:  # kill while the staged bundle is being written, or right after
            while not list(tmp_path.glob(".bundle.partial-*/model.*")) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert time.monotonic() < deadline, "the export never staged a model file"
            time.sleep(float(rng.uniform(0.0, 0.5)))
        else:
            time.sleep(float(rng.uniform(1.0, 4.0)))
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        _assert_complete(out, checkpoints={old, new})
    assert export_main(command[3:]) == 0  # then an export that runs to the end replaces it
    _assert_complete(out, checkpoints={new})


_KILL_AT_EVENT = """
import os, signal, sys
from pathlib import Path
from export.bundle_publish import publish_dir

STEPS = {"os.rename", "os.symlink", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree", "ctypes.dlopen"}
kill_at, seen = int(sys.argv[3]), [0]

def hook(event, args):
    if event in STEPS:
        seen[0] += 1
        if seen[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

sys.addaudithook(hook)
publish_dir(Path(sys.argv[1]), Path(sys.argv[2]), use_exchange=sys.argv[4] == "exchange")
"""


def _stage(parent: Path, name: str, payload: bytes) -> Path:
    staged = parent / f".bundle.partial-{name}"
    staged.mkdir()
    (staged / "model.onnx").write_bytes(payload)
    (staged / "manifest.json").write_text(name)
    return staged


@pytest.mark.parametrize("layout", ["exchange", "pointer"])
def test_a_kill_at_every_step_of_a_publish_leaves_old_or_new(tmp_path: Path, layout: str) -> None:
    """SIGKILL the publishing process at its 1st, 2nd, ... file-system step (rename, link, delete, mkdir,
    loading renameat2) until one publish completes: after each kill --out holds exactly the old or the new files."""
    if layout == "exchange" and not exchange_supported(tmp_path):
        pytest.skip(f"{tmp_path}'s file system has no renameat2(RENAME_EXCHANGE)")
    outcomes = []
    for kill_at in range(1, 40):
        work = tmp_path / str(kill_at)
        work.mkdir()
        out = work / "bundle"
        publish_dir(_stage(work, "old", b"old" * 1000), out, use_exchange=layout == "exchange")
        staged = _stage(work, "new", b"new" * 1000)
        done = subprocess.run([sys.executable, "-c", _KILL_AT_EVENT, str(staged), str(out), str(kill_at), layout],
                              env=ENV, capture_output=True, text=True, timeout=60)
        assert done.returncode in (0, -signal.SIGKILL), done.stderr
        found = ((out / "manifest.json").read_text(), (out / "model.onnx").read_bytes())
        assert found in {("old", b"old" * 1000), ("new", b"new" * 1000)}, found
        outcomes.append(found[0])
        if done.returncode == 0:
            break
    assert outcomes[-1] == "new" and "old" in outcomes  # kills before the switch kept the old bundle
    assert len(outcomes) >= 2
