"""The write log's bytes on real files: every record checks its own header, so replay tells a clean log, a
torn tail (cut, one WARNING with bytes and offset) and damage (refused, naming file, offset, the records
after it and the repair command) apart; every single-bit flip is refused, never silently dropped; old-format
logs are read and rewritten; an append reaches fsync (file, and folder for a new log) before it returns;
a failed append leaves the file as it was."""

from __future__ import annotations

import errno
import logging
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from serving.errors import StorageFailed, StorageFull
from serving.index.errors import LogDamagedError
from serving.index.log_frames import FILE_MAGIC, HEADER_SIZE, scan_log
from serving.index.write_log import LogRecord, WriteLog
from tests.serving.faulty_disk import FaultyDisk

DIM = 4


def _records() -> list[LogRecord]:
    vectors = np.arange(2 * DIM, dtype=np.float32).reshape(2, DIM)
    return [
        LogRecord("add", ["a", "b"], vectors, [{"k": "v"}, {}]),
        LogRecord("remove", ["a"]),
        LogRecord("add", ["c"], vectors[:1], [{}], upsert=True),
    ]


def _write(path: Path, records: list[LogRecord]) -> list[int]:
    """Write ``records``; returns the byte offset of each record's start, then the file size."""
    log = WriteLog(path, DIM)
    starts = []
    for record in records:
        starts.append(path.stat().st_size if path.exists() and path.stat().st_size else len(FILE_MAGIC))
        log.append(record)
    log.close()
    return [*starts, path.stat().st_size]


def _same(a: list[LogRecord], b: list[LogRecord]) -> bool:
    if [(r.op, r.ids, r.metadata, r.upsert) for r in a] != [(r.op, r.ids, r.metadata, r.upsert) for r in b]:
        return False
    return all(
        (x.vectors is None and y.vectors is None) or np.array_equal(x.vectors, y.vectors)
        for x, y in zip(a, b, strict=True)
    )


def test_round_trip_and_record_layout(tmp_path: Path) -> None:
    path = tmp_path / "j.log"
    starts = _write(path, _records())
    data = path.read_bytes()
    assert data.startswith(FILE_MAGIC) and data[starts[1] : starts[1] + 4] == b"CDDr"
    assert struct.unpack_from("<I", data, starts[1] + 4)[0] == 1  # the record's number
    head = data[starts[1] : starts[1] + 16]
    assert struct.unpack_from("<I", data, starts[1] + 16)[0] == zlib.crc32(head)  # the header checks itself
    assert _same(WriteLog(path, DIM).replay(), _records())


@pytest.mark.parametrize("cut_in", ["header", "payload"])
def test_a_torn_tail_is_cut_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture, cut_in: str) -> None:
    path = tmp_path / "j.log"
    starts = _write(path, _records())
    last, size = starts[-2], starts[-1]
    cuts = range(last + 1, last + HEADER_SIZE) if cut_in == "header" else range(last + HEADER_SIZE, size)
    whole = path.read_bytes()
    for cut in cuts:
        path.write_bytes(whole[:cut])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="serving.index"):
            records = WriteLog(path, DIM).replay()
        assert _same(records, _records()[:2])
        assert path.stat().st_size == last
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and f"{cut - last} byte(s) at byte {last}" in warnings[0]


def test_zeros_after_the_last_record_are_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "j.log"
    starts = _write(path, _records())
    with open(path, "ab") as handle:
        handle.write(bytes(300))  # space allocated for an append whose data never reached the disk
    assert _same(WriteLog(path, DIM).replay(), _records()) and path.stat().st_size == starts[-1]


def test_every_bit_flip_is_refused_with_file_offset_and_the_records_after(tmp_path: Path) -> None:
    path = tmp_path / "j.log"
    starts = _write(path, _records())
    whole = path.read_bytes()
    for position in range(len(whole)):
        record = sum(1 for start in starts[:-1] if start <= position)  # 0 = the file header
        for bit in range(8):
            flipped = bytearray(whole)
            flipped[position] ^= 1 << bit
            scan = scan_log(bytes(flipped))
            assert scan.state == "damaged", (position, bit)
            expected_offset = 0 if record == 0 else starts[record - 1]
            assert scan.damage is not None and scan.damage.offset == expected_offset, (position, bit)
            assert len(scan.payloads) == max(record - 1, 0)
            if record:
                assert [seq for _, seq in scan.damage.after] == list(range(record, len(starts) - 1))
        path.write_bytes(bytes(flipped))
        with pytest.raises(LogDamagedError) as refused:
            WriteLog(path, DIM).replay()
        message = str(refused.value)
        assert str(path) in message and f"at byte {expected_offset} of {len(whole)}" in message
        assert f"cdd-index repair --index {tmp_path}" in message
        assert path.read_bytes() == bytes(flipped)  # refused, never cut


def test_damage_in_the_middle_of_a_long_log_names_the_records_after_it(tmp_path: Path) -> None:
    path = tmp_path / "j.log"
    vectors = np.ones((1, DIM), dtype=np.float32)
    starts = _write(path, [LogRecord("add", [f"id{i}"], vectors, [{}]) for i in range(200)])
    data = bytearray(path.read_bytes())
    data[starts[100] + 8] ^= 0x04  # the length field of record #100 (the 101st)
    path.write_bytes(bytes(data))
    expected = (rf"at byte {starts[100]} .*100 record\(s\) before it are intact and 99 intact record\(s\) follow it "
                rf"\(#101\.\.#199, from byte {starts[101]}\)")
    with pytest.raises(LogDamagedError, match=expected):
        WriteLog(path, DIM).replay()


def _legacy(records: list[LogRecord]) -> bytes:
    payloads = [r.encode() for r in records]
    return b"".join(struct.pack("<II", len(p), zlib.crc32(p)) + p for p in payloads)


def test_an_old_format_log_is_read_and_rewritten_and_leftovers_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.log"
    path.write_bytes(_legacy(_records()))
    log = WriteLog(path, DIM)
    assert _same(log.replay(), _records()) and path.read_bytes().startswith(FILE_MAGIC)
    log.append(LogRecord("remove", ["b"]))
    log.close()
    assert _same(WriteLog(path, DIM).replay(), [*_records(), LogRecord("remove", ["b"])])
    path.write_bytes(_legacy(_records())[:-3])
    with pytest.raises(LogDamagedError, match="old format .* cannot tell a crash's torn tail"):
        WriteLog(path, DIM).replay()


def _fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Record (path, size at the time) of every fsync."""
    seen: list[tuple[str, int]] = []
    real = os.fsync

    def observed(fd: int) -> None:
        seen.append((os.readlink(f"/proc/self/fd/{fd}"), os.fstat(fd).st_size))
        real(fd)

    monkeypatch.setattr(os, "fsync", observed)
    return seen


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd to name an fsynced descriptor")
def test_append_fsyncs_the_written_file_and_a_new_logs_folder_before_returning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "j.log"
    log = WriteLog(path, DIM)
    seen = _fsyncs(monkeypatch)
    log.append(_records()[0])
    size = path.stat().st_size
    assert (str(path), size) in seen  # the file, with the whole record in it
    assert any(name == str(tmp_path) for name, _ in seen)  # its folder: the new name survives a power loss
    seen.clear()
    log.append(_records()[1])
    assert seen == [(str(path), path.stat().st_size)]
    log.close()


@pytest.mark.parametrize("code, error", [(errno.ENOSPC, StorageFull), (errno.EIO, StorageFailed),
                                         (errno.EDQUOT, StorageFull)])
def test_a_failed_append_leaves_the_file_as_it_was(tmp_path: Path, code: int, error: type) -> None:
    first, second, third = _records()
    with FaultyDisk() as counting:
        WriteLog(tmp_path / "count.log", DIM).append(first)
    assert [op.split()[0] for op in counting.ops] == ["open", "write", "fsync", "fsync"]  # file, then folder
    for fail_at in range(len(counting.ops)):  # a new log
        path = tmp_path / f"new{fail_at}.log"
        log = WriteLog(path, DIM)
        with FaultyDisk(fail_at, code), pytest.raises(error, match="nothing was changed"):
            log.append(first)
        assert not path.exists() or path.stat().st_size == 0
        log.append(first)
        log.close()
        assert _same(WriteLog(path, DIM).replay(), [first])
    path = tmp_path / "j.log"
    log = WriteLog(path, DIM)
    log.append(first)
    log.append(second)
    before = path.read_bytes()
    for fail_at in range(2):  # an existing log: write, fsync
        with FaultyDisk(fail_at, code), pytest.raises(error, match="nothing was changed"):
            log.append(third)
        assert path.read_bytes() == before
    log.append(third)  # the disk has room again: the record lands right after the good ones
    log.close()
    assert _same(WriteLog(path, DIM).replay(), _records())


def test_a_log_that_cannot_be_cut_back_refuses_later_appends(tmp_path: Path) -> None:
    path = tmp_path / "j.log"
    log = WriteLog(path, DIM)
    log.append(_records()[0])
    with FaultyDisk(0, errno.EIO, sticky=True), pytest.raises(StorageFailed):
        log.append(_records()[1])  # the write fails, and so does the fsync after the cut
    with pytest.raises(StorageFailed, match="refused until the server restarts"):
        log.append(_records()[1])
    log.close()
    assert _same(WriteLog(path, DIM).replay(), _records()[:1])  # the restart cuts what was left
