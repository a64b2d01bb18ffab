"""The byte format of the gallery write log (`serving.index.write_log`) and `scan_log`, which reads it.

A log file is ``FILE_MAGIC`` (8 bytes: b"CDDWLOG" + format version 2) followed by records::

    offset  size  field
    0       4     b"CDDr"   record marker
    4       4     seq       u32 little-endian: the record's number in this file, from 0
    8       4     length    u32: payload bytes
    12      4     crc       u32: crc32 of the payload
    16      4     hcrc      u32: crc32 of bytes 0..15 (the header checks itself)
    20      n     payload   one JSON line {"op", "ids", "metadata", "upsert"}, then raw float32 vectors

Because the header carries its own checksum, a damaged length can never be mistaken for the end of the
file. `scan_log` sorts every file into exactly one of three states:

- ``clean``: the file is whole records;
- ``torn``: whole records, then the beginning of one more that a crash cut short (a header prefix, a
  valid header whose payload is cut, or zeros where the kernel had allocated space): an append that was
  never acknowledged, safe to cut;
- ``damaged``: anything else (a header or payload failing its check, a record number out of order, a
  foreign file header): refused, never cut.

Logs written before this format (frames of ``<u32 length><u32 crc32>`` only, no file header) are read as
``legacy``: whole records are clean, but leftover bytes are ``damaged`` since that format cannot tell a
torn tail from a damaged length.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

__all__ = [
    "FILE_MAGIC",
    "HEADER_SIZE",
    "LogDamage",
    "LogScan",
    "encode_frame",
    "intact_payload",
    "scan_log",
    "scan_records",
]

FILE_MAGIC = b"CDDWLOG\x02"
_RECORD_MAGIC = b"CDDr"
_HEAD = struct.Struct("<4sIII")
_HCRC = struct.Struct("<I")
HEADER_SIZE = _HEAD.size + _HCRC.size
_LEGACY = struct.Struct("<II")
_LEGACY_PAYLOAD_START = b'{"op":'


def encode_frame(seq: int, payload: bytes) -> bytes:
    """One record: the self-checking header for record number ``seq``, then ``payload``."""
    head = _HEAD.pack(_RECORD_MAGIC, seq, len(payload), zlib.crc32(payload))
    return head + _HCRC.pack(zlib.crc32(head)) + payload


@dataclass(frozen=True)
class LogDamage:
    """Where a log stops being trustworthy: byte ``offset``, why, and the intact records found after it
    (``after``: (byte offset, seq) pairs of records whose header and payload both check)."""

    offset: int
    reason: str
    after: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class LogScan:
    """What `scan_log` found: ``payloads`` of the whole records before any damage (oldest first),
    ``good_end`` (the byte after the last of them), ``state`` ("clean", "torn", "damaged"), ``size``,
    ``legacy`` (the pre-v2 format) and, when damaged, ``damage``."""

    payloads: list[bytes]
    good_end: int
    size: int
    state: str
    legacy: bool = False
    damage: LogDamage | None = None

    @property
    def tail_bytes(self) -> int:
        """Bytes after the last whole record (a torn tail's length)."""
        return self.size - self.good_end


def scan_log(data: bytes) -> LogScan:
    """Sort the bytes of a log file into clean / torn / damaged (see the module docstring)."""
    if not data:
        return LogScan([], 0, 0, "clean")
    if len(data) < len(FILE_MAGIC) and FILE_MAGIC.startswith(data):
        return LogScan([], 0, len(data), "torn")
    if not data.startswith(FILE_MAGIC):
        if _looks_legacy(data):
            return _scan_legacy(data)
        if not any(data):
            return LogScan([], 0, len(data), "torn")
        return _damaged(data, [], 0, f"the file does not start with the write-log marker {FILE_MAGIC!r}")
    return scan_records(data, len(FILE_MAGIC), 0)


def scan_records(data: bytes, offset: int, first_seq: int) -> LogScan:
    """Like `scan_log`, for records from byte ``offset`` of ``data`` on, the first numbered ``first_seq``
    (a log's tail read from where an earlier scan stopped)."""
    payloads: list[bytes] = []
    while offset < len(data):
        problem = _check_record(data, offset, first_seq + len(payloads))
        if problem == "torn":
            return LogScan(payloads, offset, len(data), "torn")
        if problem:
            return _damaged(data, payloads, offset, problem)
        length = _HEAD.unpack_from(data, offset)[2]
        payloads.append(data[offset + HEADER_SIZE : offset + HEADER_SIZE + length])
        offset += HEADER_SIZE + length
    return LogScan(payloads, offset, len(data), "clean")


def _check_record(data: bytes, offset: int, seq: int) -> str:
    """"" for a whole, intact record numbered ``seq`` at ``offset``; "torn" for the start of one cut short
    at the end of the file; else why it is damaged."""
    size = len(data) - offset
    if size < HEADER_SIZE:
        rest = data[offset:]
        expected_start = _RECORD_MAGIC + struct.pack("<I", seq)
        known = min(size, len(expected_start))
        if not any(rest) or rest[:known] == expected_start[:known]:
            return "torn"
        return f"{size} trailing bytes are not the start of record #{seq}"
    magic, found_seq, length, crc = _HEAD.unpack_from(data, offset)
    (hcrc,) = _HCRC.unpack_from(data, offset + _HEAD.size)
    view = memoryview(data)
    if magic != _RECORD_MAGIC or zlib.crc32(view[offset : offset + _HEAD.size]) != hcrc:
        if data.count(0, offset) == size:
            return "torn"  # space the kernel allocated for an append whose data never reached the disk
        return f"the header of record #{seq} fails its check (marker or crc32 of the header)"
    if found_seq != seq:
        return f"the record is numbered #{found_seq}, expected #{seq} (a record is missing or repeated)"
    end = offset + HEADER_SIZE + length
    if end > len(data):
        return "torn"
    if zlib.crc32(view[offset + HEADER_SIZE : end]) != crc:
        return f"the payload of record #{seq} ({length} bytes) fails its crc32"
    return ""


def _damaged(data: bytes, payloads: list[bytes], offset: int, reason: str) -> LogScan:
    damage = LogDamage(offset, reason, _intact_after(data, offset))
    return LogScan(payloads, offset, len(data), "damaged", damage=damage)


def _intact_after(data: bytes, offset: int) -> list[tuple[int, int]]:
    """(offset, seq) of every intact record that starts after ``offset`` (found by its marker)."""
    found = []
    position = data.find(_RECORD_MAGIC, offset + 1)
    while position != -1:
        if len(data) - position >= HEADER_SIZE:
            seq = _HEAD.unpack_from(data, position)[1]
            if _check_record(data, position, seq) == "":
                found.append((position, seq))
        position = data.find(_RECORD_MAGIC, position + 1)
    return found


def intact_payload(data: bytes, offset: int) -> bytes:
    """The payload of the intact record at ``offset`` (found by `scan_log` in ``LogDamage.after``)."""
    length = _HEAD.unpack_from(data, offset)[2]
    return data[offset + HEADER_SIZE : offset + HEADER_SIZE + length]


def _looks_legacy(data: bytes) -> bool:
    if len(data) < _LEGACY.size:
        return False
    length, crc = _LEGACY.unpack_from(data, 0)
    payload = data[_LEGACY.size : _LEGACY.size + length]
    return len(payload) == length and payload.startswith(_LEGACY_PAYLOAD_START) and zlib.crc32(payload) == crc


def _scan_legacy(data: bytes) -> LogScan:
    payloads: list[bytes] = []
    offset = 0
    while offset + _LEGACY.size <= len(data):
        length, crc = _LEGACY.unpack_from(data, offset)
        end = offset + _LEGACY.size + length
        if end > len(data) or zlib.crc32(data[offset + _LEGACY.size : end]) != crc:
            break
        payloads.append(data[offset + _LEGACY.size : end])
        offset = end
    if offset == len(data):
        return LogScan(payloads, offset, len(data), "clean", legacy=True)
    reason = (
        f"{len(data) - offset} bytes after record #{len(payloads)} do not form a whole record, and this log is in "
        "the old format (before write-log format 2), which cannot tell a crash's torn tail from a damaged length"
    )
    return LogScan(payloads, offset, len(data), "damaged", legacy=True, damage=LogDamage(offset, reason))
