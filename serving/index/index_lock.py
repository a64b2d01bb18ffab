"""`IndexLock`: who may change a gallery-index folder, across processes (flock on two files in it).

- A server (`role="server"`) holds ``.serve.lock`` exclusively for its whole life: it alone writes the
  folder's log and snapshots, so a second server or a `cdd-index add/remove/build` on the same folder is
  refused with a message saying what to do instead.
- A writer (`role="writer"`: ``cdd-index add/remove/build``) holds ``.serve.lock`` shared (refused while
  a server runs) and ``.write.lock`` exclusively, waiting for other writers, from before it loads the
  index until after it published the new version: concurrent writers run one after the other and never
  lose each other's changes.
The lock files hold a line naming their holder (command and pid) for the refusal message.
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path
from typing import IO

from serving.index.errors import GalleryIndexError

__all__ = ["LOCK_FILES", "IndexInUse", "IndexLock"]

_SERVE = ".serve.lock"
_WRITE = ".write.lock"
LOCK_FILES = (_SERVE, _WRITE)


class IndexInUse(GalleryIndexError):
    """Another process holds the index folder in a way that excludes this one."""


class IndexLock:
    """Take the locks of ``role`` ("server" or "writer") on index folder ``directory``; `release` frees them."""

    def __init__(self, directory: str | Path, role: str) -> None:
        if role not in ("server", "writer"):
            raise ValueError(f"role must be 'server' or 'writer', found {role!r}")
        self.directory = Path(directory)
        self.role = role
        self.directory.mkdir(parents=True, exist_ok=True)
        self._handles: list[IO[str]] = []
        try:
            self._take()
        except BaseException:
            self.release()
            raise

    @classmethod
    def inherited(cls, directory: str | Path, fd: int) -> IndexLock:
        """The server lock of ``directory`` on file descriptor ``fd``, inherited from the `cdd-serve --workers`
        parent that took it: the lock belongs to the open file, so it stays held while any worker lives.
        Raises IndexInUse when another process holds the folder."""
        lock = cls.__new__(cls)
        lock.directory, lock.role = Path(directory), "server"
        lock._handles = [os.fdopen(fd, "a+")]
        if not _try_flock(lock._handles[0], fcntl.LOCK_EX):
            holder = _holder(lock._handles[0])
            lock.release()
            raise IndexInUse(f"index {directory} is open in another process ({holder}); the lock this worker "
                             "inherited is not its parent's")
        return lock

    def fileno(self) -> int:
        """The descriptor of the server lock (``.serve.lock``), for `inherited` in a child process."""
        return self._handles[0].fileno()

    def _take(self) -> None:
        serve = self._open(_SERVE)
        if self.role == "server":
            if not _try_flock(serve, fcntl.LOCK_EX):
                raise IndexInUse(
                    f"index {self.directory} is open in another process ({_holder(serve)}); one cdd-serve owns "
                    "a FAISS index folder at a time and cdd-index waits for no server: stop the other process "
                    "or wait for the cdd-index run to finish; replicas that share a gallery use --store milvus"
                )
            _stamp(serve, "cdd-serve")
            return
        if not _try_flock(serve, fcntl.LOCK_SH):
            raise IndexInUse(
                f"index {self.directory} is served by a running process ({_holder(serve)}); it owns the "
                "gallery, so change it through the server (AddItems / RemoveItems RPCs, e.g. cdd-search), or "
                "stop the server (SIGTERM saves its changes) and run cdd-index again"
            )
        write = self._open(_WRITE)
        fcntl.flock(write.fileno(), fcntl.LOCK_EX)
        _stamp(write, "cdd-index")

    def _open(self, name: str) -> IO[str]:
        handle = open(self.directory / name, "a+")  # noqa: SIM115 - held until release()
        self._handles.append(handle)
        return handle

    def release(self) -> None:
        """Drop the locks (closing the files); idempotent."""
        while self._handles:
            self._handles.pop().close()


def _try_flock(handle: IO[str], mode: int) -> bool:
    try:
        fcntl.flock(handle.fileno(), mode | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _stamp(handle: IO[str], what: str) -> None:
    handle.seek(0)
    handle.truncate()
    handle.write(f"{what} pid {os.getpid()} ({Path(sys.argv[0]).name})\n")
    handle.flush()


def _holder(handle: IO[str]) -> str:
    handle.seek(0)
    return handle.read().strip() or "unknown holder"
