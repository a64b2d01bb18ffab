"""The FAISS store's durability and locking: the fsynced write log (torn tails, replay, folding into
snapshots), one server per index folder, and `cdd-index add` writers that run concurrently as real
processes without losing each other's items."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from serving.index import GalleryIndex
from serving.index.atomic_dir import resolve
from serving.index.durable_gallery import DurableGallery
from serving.index.errors import DuplicateIdError, IndexCorruptError, UnknownIdError
from serving.index.index_lock import IndexInUse, IndexLock
from serving.index.write_log import LogRecord, WriteLog, journal_path

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


def test_log_round_trip_and_torn_tail_is_cut(tmp_path: Path) -> None:
    log = WriteLog(tmp_path / "j.log", DIM)
    vectors = _vectors(2)
    log.append(LogRecord("add", ["a", "b"], vectors, [{"x": 1}, {}], upsert=True))
    log.append(LogRecord("remove", ["a"]))
    log.close()
    whole = (tmp_path / "j.log").stat().st_size
    with open(tmp_path / "j.log", "ab") as handle:
        handle.write(b"\x40\x00\x00\x00\x00\x00")  # a frame cut short by a crash
    records = list(WriteLog(tmp_path / "j.log", DIM).replay())
    assert [(r.op, r.ids) for r in records] == [("add", ["a", "b"]), ("remove", ["a"])]
    assert np.array_equal(records[0].vectors, vectors) and records[0].metadata == [{"x": 1}, {}]
    assert records[0].upsert and (tmp_path / "j.log").stat().st_size == whole


def test_damaged_record_before_the_tail_is_refused(tmp_path: Path) -> None:
    log = WriteLog(tmp_path / "j.log", DIM)
    log.append(LogRecord("remove", ["a"]))
    log.append(LogRecord("remove", ["b"]))
    log.close()
    data = bytearray((tmp_path / "j.log").read_bytes())
    data[10] ^= 0xFF
    (tmp_path / "j.log").write_bytes(bytes(data))
    with pytest.raises(IndexCorruptError, match="crc32"):
        list(WriteLog(tmp_path / "j.log", DIM).replay())


def test_changes_are_logged_before_the_reply_and_replayed_at_open(folder: Path) -> None:
    gallery = DurableGallery.open(folder, "b" * 64)
    version = resolve(folder).name
    gallery.add(["new"], _vectors(1, seed=9), [{"camera": 1}])
    gallery.remove(["base0"])
    gallery.add(["base1"], _vectors(1, seed=10), [{"camera": 7}], upsert=True)
    log = journal_path(folder, version)
    records = list(WriteLog(log, DIM).replay())  # what a crash right now would leave on disk
    assert [(r.op, r.ids, r.upsert) for r in records] == [
        ("add", ["new"], False), ("remove", ["base0"], False), ("add", ["base1"], True)
    ]
    replica = GalleryIndex.load(folder)  # the snapshot alone does not have them
    for record in records:
        if record.op == "add":
            replica.add(record.ids, record.vectors, record.metadata, upsert=record.upsert)
        else:
            replica.remove(record.ids)
    assert sorted(replica.snapshot()[0]) == sorted(gallery.index.snapshot()[0])
    assert replica.get("base1")[1] == {"camera": 7}
    gallery.close()  # folds the log into a new snapshot
    assert resolve(folder).name != version and not log.exists()
    reopened = DurableGallery.open(folder, "b" * 64)
    try:
        assert reopened.replayed == 0 and len(reopened) == 5 and "new" in reopened and "base0" not in reopened
    finally:
        reopened.close()


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
