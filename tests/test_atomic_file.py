"""Atomic writes: complete files appear at once, a failed write leaves the old file, nothing stray remains;
the data is fsynced before the rename and the folder after it (`cdd_common.atomic_file`, the one writer of
training, export and serving)."""

import os
from pathlib import Path

import pytest

from cdd_common.atomic_file import atomic_path, write_text_atomic


def test_write_replaces_and_is_world_readable(tmp_path):
    target = tmp_path / "sub" / "file.json"
    write_text_atomic(target, "one")
    write_text_atomic(target, "two")
    assert target.read_text() == "two"
    assert target.stat().st_mode & 0o044 == 0o044
    assert [p.name for p in target.parent.iterdir()] == ["file.json"]


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "file.bin"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError, match="killed mid-write"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_data_is_fsynced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd to see which file an fsync flushed")
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "file.json"
    write_text_atomic(target, "durable")
    assert target.read_text() == "durable"
    [(_, tmp, dst)] = [e for e in events if e[0] == "replace"]
    assert dst == str(target)
    assert events == [("fsync", tmp), ("replace", tmp, str(target)), ("fsync", str(tmp_path))]

