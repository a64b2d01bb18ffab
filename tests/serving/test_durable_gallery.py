"""The FAISS store's durability and locking: a crash between append and fold (a real SIGKILL) replayed
by `DurableGallery.open`, a damaged log refused at open, one server per index folder, and `cdd-index add`
writers that run concurrently as real processes without losing each other's items."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from serving.index import GalleryIndex
from serving.index.atomic_dir import resolve
from serving.index.durable_gallery import DurableGallery
from serving.index.errors import DuplicateIdError, LogDamagedError, UnknownIdError
from serving.index.index_lock import IndexInUse, IndexLock
from serving.index.write_log import journal_path

DIM = 8
ROOT = Path(__file__).resolve().parents[2]


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    return _unit(np.random.default_rng(seed).normal(size=(n, DIM)))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    index = GalleryIndex(DIM, bundle_sha256="b" * 64)
    index.add([f"base{i}" for i in range(5)], _vectors(5), [{"camera": i % 2} for i in range(5)])
    index.save(tmp_path / "idx")
    return tmp_path / "idx"


_CRASHING_WRITER = """
import sys
import numpy as np
from serving.index.durable_gallery import DurableGallery

def unit(seed):
    row = np.random.default_rng(seed).normal(size=(1, DIM))
    return (row / np.linalg.norm(row)).astype(np.float32)

gallery = DurableGallery.open(sys.argv[1], "b" * 64)
gallery.add(["new"], unit(9), [{"camera": 1}])
gallery.remove(["base0"])
gallery.add(["base1"], unit(10), [{"camera": 7}], upsert=True)
print("acknowledged", flush=True)
sys.stdin.read()  # killed here, between the appends and any fold into a snapshot
""".replace("DIM", str(DIM))


def test_a_crash_between_append_and_fold_is_replayed_by_open(folder: Path) -> None:
    version = resolve(folder).name
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    writer = subprocess.Popen([sys.executable, "-c", _CRASHING_WRITER, str(folder)], cwd=ROOT, env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "acknowledged", writer.stderr
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.communicate(timeout=60)
    assert writer.returncode == -signal.SIGKILL
    assert resolve(folder).name == version and len(GalleryIndex.load(folder)) == 5  # nothing was folded
    gallery = DurableGallery.open(folder, "b" * 64)
    try:
        assert gallery.replayed == 3 and len(gallery) == 5
        assert "new" in gallery and "base0" not in gallery
        vector, meta = gallery.index.get("base1")
        assert meta == {"camera": 7} and np.allclose(vector, _vectors(1, seed=10)[0])
        assert gallery.index.get("new")[1] == {"camera": 1}
    finally:
        gallery.close()  # folds the log into a new snapshot
    assert resolve(folder).name != version and not journal_path(folder, version).exists()
    reopened = DurableGallery.open(folder, "b" * 64)
    try:
        assert reopened.replayed == 0 and sorted(reopened.index.snapshot()[0]) == sorted(gallery.index.snapshot()[0])
    finally:
        reopened.close()


def test_a_damaged_log_refuses_the_open_and_releases_the_folder(folder: Path) -> None:
    gallery = DurableGallery.open(folder)
    version = resolve(folder).name
    for i in range(3):
        gallery.add([f"n{i}"], _vectors(1, seed=20 + i))
    gallery._log.close()  # what a kill leaves: the log, no snapshot (the lock goes with the process)
    gallery._lock.release()
    log = journal_path(folder, version)
    data = bytearray(log.read_bytes())
    data[20] ^= 0x01  # inside record #0's header
    log.write_bytes(bytes(data))
    with pytest.raises(LogDamagedError, match=r"at byte 8 .*2 intact record\(s\) follow it .*cdd-index repair"):
        DurableGallery.open(folder)
    assert log.read_bytes() == bytes(data)  # nothing was cut
    IndexLock(folder, "writer").release()  # the refused open released the folder


def test_refused_changes_are_not_logged(folder: Path) -> None:
    gallery = DurableGallery.open(folder)
    try:
        with pytest.raises(DuplicateIdError):
            gallery.add(["base2"], _vectors(1))
        with pytest.raises(UnknownIdError):
            gallery.remove(["nope"])
        assert gallery.stats()["logged_changes"] == 0 and gallery.persist() is None
    finally:
        gallery.close()


def test_one_server_per_folder_and_writers_are_refused_while_it_runs(folder: Path) -> None:
    gallery = DurableGallery.open(folder)
    try:
        with pytest.raises(IndexInUse, match="open in another process"):
            DurableGallery.open(folder)
        with pytest.raises(IndexInUse, match="AddItems / RemoveItems"):
            IndexLock(folder, "writer")
    finally:
        gallery.close()
    writer = IndexLock(folder, "writer")  # free again once the server closed
    writer.release()


def _cli_add(bundle: Path, index: Path, images: Path, prefix: str) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "serving.index", "add", "--index", str(index), "--bundle", str(bundle),
        "--images", str(images), "--id-prefix", prefix, "--quiet", "--backend", "onnxruntime-cpu",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_concurrent_cdd_index_add_runs_keep_both_items(
    tiny_bundle: Path, gallery_images: Path, tmp_path: Path
) -> None:
    from serving.index.__main__ import main

    index = tmp_path / "index"
    assert main(["build", "--bundle", str(tiny_bundle), "--images", str(gallery_images), "--out", str(index),
                 "--quiet"]) == 0
    before = len(GalleryIndex.load(index))
    runs = [_cli_add(tiny_bundle, index, gallery_images, prefix) for prefix in ("A/", "B/")]
    for run in runs:
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
    ids = set(GalleryIndex.load(index).snapshot()[0])
    assert len(ids) == 3 * before
    assert {f"A/{p.name}" for p in gallery_images.glob("*.jpg")} <= ids
    assert {f"B/{p.name}" for p in gallery_images.glob("*.jpg")} <= ids
