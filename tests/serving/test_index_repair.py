"""`cdd-index check` and `cdd-index repair` on real index folders: the issue's reproduction (200 logged adds,
one bit flipped in the length field of the 101st record) is refused by the server's open, reported by
check (exit 1) with the offset and the intact records after it, and repaired explicitly: a backup of the
old state, every intact record kept (199 of 200), a new snapshot that opens cleanly. A tampered snapshot
(SHA256SUMS recomputed) is refused naming the file and line."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from serving.index.__main__ import main as cdd_index
from serving.index.atomic_dir import CHECKSUM_FILE, resolve
from serving.index.durable_gallery import DurableGallery
from serving.index.errors import IndexCorruptError, LogDamagedError
from serving.index.gallery import GalleryIndex
from serving.index.write_log import LogRecord, WriteLog, journal_path

DIM = 8
ADDED = 200


def _unit(n: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(n, DIM))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def logged(tmp_path: Path) -> tuple[Path, list[int]]:
    """An index of 10 items whose log holds ADDED adds (what a killed server leaves); returns (folder,
    the byte offset of each record)."""
    folder = tmp_path / "idx"
    index = GalleryIndex(DIM)
    index.add([f"base{i}" for i in range(10)], _unit(10, 0))
    index.save(folder)
    path = journal_path(folder, resolve(folder).name)
    log = WriteLog(path, DIM)
    starts = []
    for i in range(ADDED):
        starts.append(path.stat().st_size if path.exists() else 8)
        log.append(LogRecord("add", [f"new{i}"], _unit(1, 100 + i), [{"i": i}]))
    log.close()
    return folder, starts


def _run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, dict]:
    code = cdd_index(list(argv))
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else {}


def test_check_reports_a_clean_index_and_a_torn_tail_as_ok(logged: tuple, capsys: pytest.CaptureFixture) -> None:
    folder, _ = logged
    code, report = _run(capsys, "check", "--index", str(folder))
    assert code == 0 and report["ok"] and report["log"]["state"] == "clean"
    assert report["log"]["records"] == ADDED and report["count_after_replay"] == 10 + ADDED
    log = journal_path(folder, resolve(folder).name)
    with open(log, "ab") as handle:
        handle.write(b"CDDr\xc8\x00")  # the start of record #200, cut by a crash
    code, report = _run(capsys, "check", "--index", str(folder))
    assert code == 0 and report["log"]["state"] == "torn" and report["log"]["torn_tail"]["bytes"] == 6


def test_a_flipped_length_bit_is_refused_checked_and_repaired(
    logged: tuple, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder, starts = logged
    log = journal_path(folder, resolve(folder).name)
    data = bytearray(log.read_bytes())
    data[starts[100] + 8] ^= 0x02  # one bit of the length field of record #100 (the 101st)
    log.write_bytes(bytes(data))
    with pytest.raises(LogDamagedError, match=f"at byte {starts[100]} .*99 intact record"):
        DurableGallery.open(folder)
    code, report = _run(capsys, "check", "--index", str(folder))
    assert code == 1 and not report["ok"] and report["fix"].startswith("cdd-index repair")
    damage = report["log"]["damage"]
    assert damage["offset"] == starts[100] and damage["intact_records_after"] == list(range(101, ADDED))
    backup, old_version = tmp_path / "backup", resolve(folder).name
    code, report = _run(capsys, "repair", "--index", str(folder), "--backup", str(backup))
    assert code == 0 and report["repaired"] and report["records_lost"] == [100]
    assert report["records_applied"] == ADDED - 1 and report["records_skipped"] == []
    assert (backup / log.name).read_bytes() == bytes(data) and (backup / "CURRENT").is_file()
    assert (backup / old_version / CHECKSUM_FILE).is_file() and resolve(folder).name != old_version
    assert not log.exists()  # folded into the new snapshot
    gallery = DurableGallery.open(folder)
    try:
        ids = set(gallery.index.snapshot()[0])
        assert ids == {f"base{i}" for i in range(10)} | {f"new{i}" for i in range(ADDED) if i != 100}
        assert gallery.index.get("new150")[1] == {"i": 150}
    finally:
        gallery.close()
    code, report = _run(capsys, "check", "--index", str(folder))
    assert code == 0 and report["ok"]


def test_repair_is_refused_while_a_server_has_the_folder(logged: tuple, capsys: pytest.CaptureFixture) -> None:
    folder, _ = logged
    gallery = DurableGallery.open(folder)
    try:
        assert cdd_index(["repair", "--index", str(folder)]) == 2
        assert "served by a running process" in capsys.readouterr().err
    finally:
        gallery.close()


def _tamper(folder: Path, name: str, edit) -> Path:
    """Rewrite one file of the live version and recompute SHA256SUMS, as an attacker (or a bad tool) would."""
    version = resolve(folder)
    path = version / name
    path.write_text(edit(path.read_text()))
    sums = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n"
            for p in sorted(version.iterdir()) if p.name != CHECKSUM_FILE]
    (version / CHECKSUM_FILE).write_text("".join(sums))
    return path


@pytest.mark.parametrize("edit, found", [
    (lambda text: text.replace('"label": 3', '"label": "x"', 1), "label is 'x'"),
    (lambda text: text.replace('"metadata": {}', '"metadata": []', 1), "metadata is []"),
    (lambda text: text.replace('"id": "base2", ', "", 1), "id is None"),
    (lambda text: text.replace("{", "[", 1), "not a JSON row"),
])
def test_a_tampered_snapshot_row_names_the_file_and_line(
    logged: tuple, capsys: pytest.CaptureFixture, edit, found: str
) -> None:
    folder, _ = logged
    path = _tamper(folder, "items.jsonl", edit)
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if _row_changed(text))
    with pytest.raises(IndexCorruptError, match=re.escape(f"{path}:{line}: {found}")):
        GalleryIndex.load(folder)
    code, report = _run(capsys, "check", "--index", str(folder))
    assert code == 1 and f"{path}:{line}" in report["snapshot"]["error"]


def _row_changed(text: str) -> bool:
    try:
        row = json.loads(text)
    except json.JSONDecodeError:
        return True
    return not (isinstance(row, dict) and isinstance(row.get("id"), str) and isinstance(row.get("label"), int)
                and not isinstance(row.get("label"), bool) and isinstance(row.get("metadata"), dict))


def test_cdd_serve_refuses_to_start_on_a_damaged_log(
    tiny_bundle: Path, tiny_manifest, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from serving import server as server_module

    dim = tiny_manifest.output.dim
    folder = tmp_path / "idx"
    index = GalleryIndex(dim, bundle_sha256=tiny_manifest.sha256())
    rows = np.random.default_rng(0).normal(size=(3, dim))
    index.add(["a", "b", "c"], (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32))
    index.save(folder)
    log = journal_path(folder, resolve(folder).name)
    writer = WriteLog(log, dim)
    for i in range(3):
        writer.append(LogRecord("remove", [f"x{i}"]))
    writer.close()
    data = bytearray(log.read_bytes())
    data[-3] ^= 0x10  # the payload of the last record: damage, not a torn tail
    log.write_bytes(bytes(data))
    code = server_module.main(["--bundle", str(tiny_bundle), "--index", str(folder), "--port", "0",
                               "--backend", "onnxruntime-cpu"])
    assert code == 2
    assert f"{log}: the write log is damaged at byte" in caplog.text and "payload of record #2" in caplog.text
    assert f"cdd-index repair --index {folder}" in caplog.text and log.read_bytes() == bytes(data)
