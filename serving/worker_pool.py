"""`run_workers`: ``cdd-serve --workers N``, one server process per core behind a listed port range.

One Python process serves from one core at most (the GIL), so `cdd-serve --workers N` starts N worker
processes, each a whole cdd-serve (its own engine, batcher, gRPC server and in-memory view of the
gallery) on its own port: ``--port P`` gives ports P .. P+N-1 (port 0: each worker picks a free one and
logs it). Clients spread calls over the ports (`serving.client.RetrievalClient` takes a comma-separated
list and round-robins over it).

Writes (FAISS store): this parent takes the index folder's server lock, folds any write log into a
snapshot, and hands the lock's file to every worker (it stays held while any of them lives, so a second
server or a cdd-index writer is refused as with one process). The workers append every change to the
one write log under a file lock and apply each other's changes before every read
(`serving.index.shared_log`): an acknowledged AddItems / RemoveItems is on disk and seen by the next
Search on any port. With every worker stopped the parent folds the log into a snapshot again. A Milvus
server store needs nothing more (each worker is a client); an embedded milvus-lite store belongs to one
process and is refused. Without ``--workers`` cdd-serve starts one process per core (`default_workers`),
or one for a milvus-lite index.

CPU affinity (``--cpu-affinity auto``, the default): with no more workers than usable cores, each worker
process is pinned to its own share of them (`worker_cores`: the cores split into N contiguous groups), so a
worker's event loop and batch worker hand the GIL to each other on one core and the workers do not
migrate between cores; ``off`` leaves scheduling to the OS. A restarted worker gets the same cores.

A worker that dies is started again on the same port; a worker that exits with status 2 (a bad flag,
bundle or index) stops them all. SIGTERM / SIGINT: every worker drains and stops, then the fold. Workers
die with this process (PR_SET_PDEATHSIG), so SIGKILL of the parent behaves like SIGKILL of one server.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from serving.config import ServeConfig
from serving.index.atomic_dir import resolve
from serving.index.disk_format import read_info
from serving.index.errors import GalleryIndexError
from serving.index.index_lock import IndexLock

__all__ = ["WORKER_LOCK_FLAG", "WORKER_PARENT_FLAG", "core_count", "default_workers", "die_with_parent",
           "engine_threads_per_worker", "pin_process", "resolve_workers", "run_workers", "usable_cores", "worker_cores",
           "worker_ports"]

WORKER_LOCK_FLAG = "--worker-lock-fd"
WORKER_PARENT_FLAG = "--worker-parent-pid"
_LOG = logging.getLogger("serving.workers")
_BAD_CONFIG = 2
_RESTART_PAUSE_S = 1.0
_PR_SET_PDEATHSIG = 1


def worker_ports(port: int, workers: int) -> list[int]:
    """The port of each worker: P .. P+N-1, or all 0 (each picks a free one) for port 0."""
    return [0 if port == 0 else port + i for i in range(workers)]


def engine_threads_per_worker(workers: int) -> int:
    """ONNX Runtime intra-op threads of each of ``workers`` processes when ``--engine-threads`` is 0: the
    cores shared out (at least one), so N workers never run more engine threads than there are cores."""
    return max(1, core_count() // workers)


def core_count() -> int:
    """The cores this process may run on (its CPU affinity where the OS reports one, else os.cpu_count())."""
    return len(usable_cores())


def usable_cores() -> tuple[int, ...]:
    """The ids of the cores this process may run on, ascending (its CPU affinity where the OS reports one,
    else 0 .. os.cpu_count() - 1)."""
    try:
        cores = tuple(sorted(os.sched_getaffinity(0)))
    except AttributeError:
        cores = tuple(range(os.cpu_count() or 1))
    return cores or (0,)


def worker_cores(workers: int, cores: Sequence[int]) -> list[tuple[int, ...]] | None:
    """The cores each of ``workers`` processes is pinned to: ``cores`` split into ``workers`` contiguous
    groups as even as possible (the later groups take the remainder), or None when there are more workers
    than cores (then no worker is pinned)."""
    if workers < 1 or workers > len(cores):
        return None
    base, extra = divmod(len(cores), workers)
    groups, start = [], 0
    for i in range(workers):
        size = base + (1 if i >= workers - extra else 0)
        groups.append(tuple(cores[start:start + size]))
        start += size
    return groups


def default_workers(index: Path) -> int:
    """``--workers`` when not given (or 0): one process per core, except for an index whose gallery lives in
    an embedded milvus-lite database (one process owns it): 1 then, with one log line saying why. An index
    that cannot be read counts as FAISS here (loading it reports the problem)."""
    cores = core_count()
    if cores > 1 and _embedded_milvus(index):
        _LOG.info("--workers: 1 process, not one per core (%d): the index %s keeps its gallery in an embedded "
                  "milvus-lite database, which one process owns", cores, index)
        return 1
    return cores


def resolve_workers(config: ServeConfig) -> int:
    """The server processes to run: ``config.workers``, or `default_workers` when it is 0."""
    return config.workers or default_workers(config.index)


def _embedded_milvus(index: Path) -> bool:
    try:
        info = read_info(resolve(index))
    except (OSError, ValueError, GalleryIndexError):
        return False
    return str(info.get("store", "faiss")) == "milvus" and not (info.get("milvus") or {}).get("uri")


def die_with_parent(parent_pid: int) -> None:
    """Called first thing by a worker process: the kernel kills it (SIGKILL) when its parent dies; if the parent
    ``parent_pid`` died before this call, exit at once. Workers arm this themselves, so the parent spawns them
    without a preexec_fn: code run between fork and exec in a copy of a threaded parent (gRPC's poller, ONNX
    Runtime's pools) can abort or deadlock."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


def pin_process(pid: int, cores: tuple[int, ...]) -> None:
    """Keep every thread process ``pid`` has now to ``cores`` (threads it starts later inherit them); an OS
    refusal is left to the caller's `_pinned` check."""
    try:
        threads = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        threads = [pid]
    for tid in threads:
        try:
            os.sched_setaffinity(tid, cores)
        except OSError:  # refused, or a thread that just ended
            pass


def _check_store(config: ServeConfig) -> str:
    info = read_info(resolve(config.index))
    store = str(info.get("store", "faiss"))
    if store == "milvus" and not (info.get("milvus") or {}).get("uri"):
        raise ValueError(
            f"--workers {config.workers}: the index {config.index} keeps its gallery in an embedded milvus-lite "
            "database, which one process owns; serve it with --workers 1, or rebuild it on a Milvus server "
            "(cdd-index build --store milvus --milvus-uri ...)"
        )
    return store


def _check_bundle(config: ServeConfig) -> None:
    """Refuse, before any worker starts, an index built with another (undeclared) bundle: the error then
    comes from this process, once (each worker checks again, with the bundle's file hashes)."""
    from serving.bundle import load_bundle
    from serving.compatibility import gallery_bundle_for
    from serving.index.gallery import GalleryIndex

    manifest = load_bundle(config.bundle, verify=False)
    gallery_bundle_for(manifest, GalleryIndex.read_info(config.index).get("bundle_sha256"), config.index)


def _fold(config: ServeConfig, lock: IndexLock) -> None:
    """Fold the folder's write log into a snapshot (nothing to do when it is empty)."""
    from serving.index.durable_gallery import DurableGallery

    DurableGallery.open(config.index, device="cpu", lock=lock).close()


def _pinned(pid: int, cores: tuple[int, ...]) -> bool:
    """Whether process ``pid`` keeps to exactly ``cores`` (True when it is already gone: nothing to report)."""
    try:
        return os.sched_getaffinity(pid) == set(cores)
    except ProcessLookupError:
        return True


class _Workers:
    def __init__(self, config: ServeConfig, argv: Sequence[str], lock: IndexLock | None) -> None:
        self._config = config
        self._argv = list(argv)
        self._lock_fd = lock.fileno() if lock is not None else None
        self._ports = worker_ports(config.port, config.workers)
        self._cores = worker_cores(config.workers, usable_cores()) if config.cpu_affinity == "auto" else None
        if config.cpu_affinity == "auto" and self._cores is None:
            _LOG.info("--cpu-affinity auto: %d workers for %d cores, so no worker is pinned", config.workers,
                      core_count())
        self.processes: list[subprocess.Popen] = [self._spawn(i) for i in range(config.workers)]

    def _spawn(self, i: int) -> subprocess.Popen:
        extra = ["--workers", "1", "--port", str(self._ports[i])]
        if self._config.engine_threads == 0:
            extra += ["--engine-threads", str(engine_threads_per_worker(self._config.workers))]
        if self._config.metrics_port is not None:
            extra += ["--metrics-port", str(0 if self._config.metrics_port == 0 else self._config.metrics_port + i)]
        if self._lock_fd is not None:
            extra += [WORKER_LOCK_FLAG, str(self._lock_fd)]
        extra += [WORKER_PARENT_FLAG, str(os.getpid())]
        command = [sys.executable, "-m", "serving.server", *self._argv, *extra]
        cores = None if self._cores is None else self._cores[i]
        # No preexec_fn: the child is spawned without running code between fork and exec (see die_with_parent).
        # It is pinned here, a moment after exec, long before its interpreter starts any thread.
        process = subprocess.Popen(command, pass_fds=() if self._lock_fd is None else (self._lock_fd,))
        if cores is not None:
            pin_process(process.pid, cores)
        if cores is not None and not _pinned(process.pid, cores):
            _LOG.warning("worker %d: could not keep it to cores %s (the OS refused the CPU affinity); it may run "
                         "on any core", i, ",".join(map(str, cores)))
            cores = None
        _LOG.info("worker %d: pid %d, port %s, cores %s", i, process.pid, self._ports[i] or "any free",
                  "any" if cores is None else ",".join(map(str, cores)))
        return process

    def watch(self, stop: threading.Event) -> int:
        """Restart workers that die until ``stop``; returns 2 when one refused its configuration."""
        while not stop.wait(0.25):
            for i, process in enumerate(self.processes):
                code = process.poll()
                if code is None:
                    continue
                if code == _BAD_CONFIG:
                    _LOG.error("worker %d exited with status 2 (bad configuration); stopping all workers", i)
                    return _BAD_CONFIG
                _LOG.error("worker %d (pid %d) exited with status %s; starting it again", i, process.pid, code)
                time.sleep(_RESTART_PAUSE_S)
                self.processes[i] = self._spawn(i)
        return 0

    def stop(self, grace_s: float) -> bool:
        """SIGTERM every worker, wait for their drain, SIGKILL stragglers; True when all exited with 0, or were
        ended by that SIGTERM itself: a worker still starting (its handler, installed before it serves anything,
        not yet in place) had acknowledged nothing."""
        signalled = set()
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                signalled.add(process.pid)
        clean = True
        for process in self.processes:
            try:
                code = process.wait(grace_s + 30.0)
                clean = (code == 0 or (code == -signal.SIGTERM and process.pid in signalled)) and clean
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                clean = False
        return clean


def run_workers(config: ServeConfig, argv: Sequence[str], stop: threading.Event) -> int:
    """Serve with ``config.workers`` processes until ``stop``; ``argv``: this cdd-serve's own flags (each
    worker gets them plus its port). Returns 0 after a clean shutdown, 2 when a worker refused its
    configuration, 1 when a worker had to be killed. Raises ValueError (milvus-lite), GalleryIndexError
    (IndexInUse, a damaged index, one built with another bundle), BundleError."""
    store = _check_store(config)
    _check_bundle(config)
    lock = IndexLock(config.index, "server") if store == "faiss" else None
    try:
        if lock is not None:
            _fold(config, lock)
        workers = _Workers(config, argv, lock)
        _LOG.info("cdd-serve: %d worker processes on %s", config.workers,
                  ", ".join(str(p) for p in worker_ports(config.port, config.workers)) if config.port else
                  "free ports (each logs its own)")
        status = workers.watch(stop)
        clean = workers.stop(config.grace_s)
        if lock is not None:
            _fold(config, lock)
    finally:
        if lock is not None:
            lock.release()
    _LOG.info("stopped")
    return status or (0 if clean else 1)
