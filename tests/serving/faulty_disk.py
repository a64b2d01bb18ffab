"""`FaultyDisk`: counts every write-side file-system operation made while active and fails the chosen one
with an OSError (ENOSPC, EIO, ...), by wrapping the os calls and Python's file objects.

Counted operations: ``os.open`` with a write or create flag, ``os.write``, ``os.fsync``, ``os.ftruncate``,
``os.replace``, ``os.mkdir`` and every ``write`` on a file opened for writing with ``open`` / ``io.open`` /
``Path.open`` (so ``Path.write_text`` and ``np.save`` to a handle count too). Use as a context manager;
``ops`` lists what ran (name and path), so a test first counts the operations of a change with
``fail_at=None`` and then fails each of them in turn.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
from typing import Any

import pytest

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


class FaultyDisk:
    """Fail operation number ``fail_at`` (0-based; None = never) with ``code``; with ``sticky`` every
    counted operation after it fails too, except ``os.ftruncate`` (shrinking needs no space)."""

    def __init__(self, fail_at: int | None = None, code: int = errno.ENOSPC, sticky: bool = False) -> None:
        self._patches = pytest.MonkeyPatch()
        self.fail_at = fail_at
        self.code = code
        self.sticky = sticky
        self.ops: list[str] = []
        self.failed: str | None = None

    def _tick(self, name: str) -> None:
        index = len(self.ops)
        self.ops.append(name)
        hit = self.fail_at is not None and (index == self.fail_at or (self.sticky and index > self.fail_at))
        if hit and not (self.sticky and index > self.fail_at and name.startswith("ftruncate")):
            self.failed = self.failed or name
            raise OSError(self.code, os.strerror(self.code))

    def __enter__(self) -> FaultyDisk:
        real_open, real_write, real_fsync = os.open, os.write, os.fsync
        real_ftruncate, real_replace, real_mkdir = os.ftruncate, os.replace, os.mkdir
        real_file_open = io.open
        disk = self

        def fs_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            if flags & _WRITE_FLAGS:
                disk._tick(f"open {path}")
            return real_open(path, flags, *args, **kwargs)

        def fs_write(fd: int, data: Any) -> int:
            disk._tick(f"write fd {fd}")
            return real_write(fd, data)

        def fs_fsync(fd: int) -> None:
            disk._tick(f"fsync fd {fd}")
            real_fsync(fd)

        def fs_ftruncate(fd: int, length: int) -> None:
            disk._tick(f"ftruncate fd {fd}")
            real_ftruncate(fd, length)

        def fs_replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            disk._tick(f"replace {src} -> {dst}")
            real_replace(src, dst, *args, **kwargs)

        def fs_mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
            disk._tick(f"mkdir {path}")
            real_mkdir(path, *args, **kwargs)

        def file_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            handle = real_file_open(file, mode, *args, **kwargs)
            if any(flag in mode for flag in "wax+"):
                disk._tick(f"open {file}")
                return _CountedFile(handle, disk, str(file))
            return handle

        patch = self._patches.setattr
        patch(os, "open", fs_open)
        patch(os, "write", fs_write)
        patch(os, "fsync", fs_fsync)
        patch(os, "ftruncate", fs_ftruncate)
        patch(os, "replace", fs_replace)
        patch(os, "mkdir", fs_mkdir)
        patch(io, "open", file_open)
        patch(builtins, "open", file_open)
        return self

    def __exit__(self, *exc: object) -> None:
        self._patches.undo()


class _CountedFile:
    """A file object whose ``write`` is a counted operation; everything else is the real file's."""

    def __init__(self, handle: Any, disk: FaultyDisk, name: str) -> None:
        self._handle = handle
        self._disk = disk
        self._name = name

    def write(self, data: Any) -> int:
        self._disk._tick(f"write {self._name}")
        return self._handle.write(data)

    def __enter__(self) -> _CountedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)
