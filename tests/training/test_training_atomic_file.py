"""Atomic writes: complete files appear at once, a failed write leaves the old file, nothing stray remains."""

import pytest

from training.atomic_file import atomic_path, write_text_atomic


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
