"""cdd-serve's process and thread flags: --workers counts processes (default and 0: one per core, or one
for an embedded milvus-lite index), --rpc-threads the pool threads of each, and the old --max-workers still
sets them while naming the new flag."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from serving import worker_pool
from serving.config import ServeConfig
from serving.index.gallery import GalleryIndex
from serving.index.gallery_backend import save_milvus_manifest
from serving.index.milvus_gallery import MilvusGallery
from serving.serve_flags import config_from_args, flag_parser
from serving.worker_pool import core_count, resolve_workers, worker_cores

BASE = ["--bundle", "b", "--index", "i"]


def _config(*flags: str):
    return config_from_args(flag_parser().parse_args([*BASE, *flags]))


def test_rpc_threads_and_its_deprecated_spelling_set_the_same_field(capsys: pytest.CaptureFixture) -> None:
    assert _config("--rpc-threads", "48").max_workers == 48
    assert "deprecated" not in capsys.readouterr().err
    assert _config("--max-workers", "50").max_workers == 50
    assert "--max-workers is deprecated; use --rpc-threads" in capsys.readouterr().err


def test_workers_counts_processes_and_zero_means_one_per_core() -> None:
    assert _config().workers == 0  # the default: resolved when cdd-serve starts (below)
    assert _config("--workers", "3").workers == 3
    assert resolve_workers(_config("--workers", "0")) == core_count()
    assert resolve_workers(_config("--workers", "3")) == 3
    with pytest.raises(ValueError, match="--workers must be >= 0"):
        _config("--workers", "-1")


def _faiss_index(folder: Path) -> Path:
    index = GalleryIndex(4, "flat", bundle_sha256="a" * 64)
    index.add(["x"], np.eye(1, 4, dtype=np.float32))
    index.save(folder)
    return folder


def _milvus_lite_index(folder: Path) -> Path:
    gallery = MilvusGallery.create(str(folder / "milvus.db"), "lite", 4, bundle_sha256="a" * 64)
    try:
        save_milvus_manifest(folder, gallery, "cosine", "t0", "t1")
    finally:
        gallery.close()
    return folder


def _said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "serving.workers"]


def test_default_workers_is_one_per_core_but_one_for_an_embedded_milvus_lite_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(worker_pool, "core_count", lambda: 4)  # so the rule shows on any machine
    caplog.set_level(logging.INFO, logger="serving.workers")
    faiss = ["--index", str(_faiss_index(tmp_path / "faiss"))]
    lite = ["--index", str(_milvus_lite_index(tmp_path / "lite"))]
    assert resolve_workers(_config(*faiss)) == 4
    assert resolve_workers(_config(*faiss, "--workers", "0")) == 4
    assert not _said(caplog)
    assert resolve_workers(_config(*lite)) == 1
    assert _said(caplog) == [
        f"--workers: 1 process, not one per core (4): the index {tmp_path / 'lite'} keeps its gallery in an "
        "embedded milvus-lite database, which one process owns"]
    assert resolve_workers(_config(*lite, "--workers", "2")) == 2  # asked for: cdd-serve then refuses it, saying why
    assert resolve_workers(_config("--index", str(tmp_path / "absent"))) == 4  # loading it reports the problem


def test_workers_share_the_cores_out_among_their_engines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_pool, "core_count", lambda: 4)  # so the rule shows on any machine
    assert [worker_pool.engine_threads_per_worker(n) for n in (1, 2, 3, 4, 8)] == [4, 2, 1, 1, 1]


def test_the_serving_log_line_names_the_engine_threads_onnx_runtime_runs(tiny_bundle: Path) -> None:
    from serving.backends import create_engine
    from serving.server import _engine_threads

    default = create_engine(tiny_bundle, backend="onnxruntime-cpu", spin=False)
    two = create_engine(tiny_bundle, backend="onnxruntime-cpu", threads=2, spin=False)
    assert [_engine_threads(e.describe()) for e in (default, two)] == ["one per core", "2"]
    assert _engine_threads({"backend": "torch"}) == "n/a"


def test_worker_cores_split_the_cores_into_contiguous_groups_or_pin_nothing() -> None:
    assert worker_cores(2, (0, 1)) == [(0,), (1,)]
    assert worker_cores(3, tuple(range(8))) == [(0, 1), (2, 3, 4), (5, 6, 7)]  # the later groups take the rest
    assert worker_cores(1, (2, 5)) == [(2, 5)]
    assert worker_cores(4, (0, 1)) is None  # more workers than cores: none is pinned
    assert _config().cpu_affinity == "auto" and _config("--cpu-affinity", "off").cpu_affinity == "off"
    with pytest.raises(ValueError, match=r"--cpu-affinity must be one of auto, off, got 'on'"):
        ServeConfig(bundle=Path("b"), index=Path("i"), cpu_affinity="on")


def test_a_worker_the_os_will_not_pin_still_runs_and_is_reported_unpinned() -> None:
    impossible = (max(os.sched_getaffinity(0)) + 4096,)  # a core this machine does not have: EINVAL
    child = subprocess.Popen(["sleep", "30"])
    try:
        worker_pool.pin_process(child.pid, impossible)
        assert child.poll() is None  # still running despite the refused affinity
        assert not worker_pool._pinned(child.pid, impossible)
        assert os.sched_getaffinity(child.pid) == os.sched_getaffinity(0)
        one = (min(os.sched_getaffinity(0)),)
        worker_pool.pin_process(child.pid, one)
        assert worker_pool._pinned(child.pid, one) and os.sched_getaffinity(child.pid) == set(one)
    finally:
        child.kill()
        child.wait()


def test_a_worker_whose_parent_is_already_gone_exits_at_once() -> None:
    code = "from serving.worker_pool import die_with_parent; die_with_parent({}); print('still here')"
    gone = subprocess.run([sys.executable, "-c", code.format(os.getpid() + 1_000_000)], capture_output=True,
                          text=True, timeout=120)
    assert (gone.returncode, gone.stdout) == (1, "")
    alive = subprocess.run([sys.executable, "-c", code.format(os.getpid())], capture_output=True, text=True,
                           timeout=120)
    assert (alive.returncode, alive.stdout) == (0, "still here\n")


def test_stopping_counts_a_worker_ended_by_its_own_sigterm_as_clean_and_a_failed_one_not() -> None:
    starting = subprocess.Popen(["sleep", "30"])  # like a worker still importing: SIGTERM's default action ends it
    pool = object.__new__(worker_pool._Workers)
    pool.processes = [starting]
    assert pool.stop(grace_s=1.0) and starting.returncode == -15
    failed = subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])
    failed.wait(60)  # exited by itself before the stop: not ended by the pool's SIGTERM
    pool.processes = [failed, subprocess.Popen(["sleep", "30"])]
    assert not pool.stop(grace_s=1.0)
