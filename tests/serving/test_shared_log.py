"""`SharedLog` through two `DurableGallery.open_worker` views of one folder (what two `cdd-serve --workers`
processes hold): each sees the other's acknowledged changes at its next read or write, a dead writer's
torn tail is ignored by readers and cut by the next writer, and a normal open replays everything."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serving.index.atomic_dir import resolve
from serving.index.durable_gallery import DurableGallery
from serving.index.errors import DuplicateIdError
from serving.index.gallery import GalleryIndex
from serving.index.index_lock import IndexLock
from serving.index.log_frames import encode_frame
from serving.index.write_log import LogRecord, journal_path

DIM = 4


def _unit(i: int) -> np.ndarray:
    vector = np.zeros((1, DIM), dtype=np.float32)
    vector[0, i % DIM] = 1.0
    return vector


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    index = GalleryIndex(DIM, "flat")
    index.add(["base"], _unit(3), [{"n": 0}])
    index.save(tmp_path / "index")
    return tmp_path / "index"


def test_two_views_see_each_others_changes_and_cut_a_dead_writers_torn_tail(folder: Path) -> None:
    lock = IndexLock(folder, "server")
    a = DurableGallery.open_worker(folder, lock=lock)
    b = DurableGallery.open_worker(folder, lock=lock)
    try:
        assert a.add(["x"], _unit(0), [{"n": 1}]) == 1
        assert b.search(_unit(0), 1)[0][0].id == "x" and len(b) == 2
        with pytest.raises(DuplicateIdError):  # b's check runs after it applied a's record
            b.add(["x"], _unit(1), [{}])
        log = journal_path(folder, resolve(folder).name)
        size = log.stat().st_size
        frame = encode_frame(1, LogRecord("add", ["ghost"], _unit(2), [{}]).encode())
        with open(log, "ab") as handle:  # a writer killed mid-append
            handle.write(frame[:30])
        assert len(a) == 2 and "ghost" not in a  # readers stop at the last whole record
        assert b.remove(["x"]) == 1  # the writer cuts the tail, then appends record #1
        assert log.stat().st_size == size + len(encode_frame(1, LogRecord("remove", ["x"]).encode()))
        assert "x" not in a and len(a) == 1
        assert a.persist() is None and log.exists()  # a worker never folds; its parent does
    finally:
        a.close()
        b.close()
        lock.release()
    reopened = DurableGallery.open(folder)
    try:
        assert reopened.replayed == 2 and len(reopened) == 1 and "base" in reopened
    finally:
        reopened.close()
