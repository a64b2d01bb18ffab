"""Publish a staged bundle folder at ``--out`` so that a kill at any moment leaves the old or the new
bundle complete there, and a power loss after a successful publish keeps the new one.

Steps: fsync every staged file and the staged folder; then one atomic step makes the new bundle visible:

- ``out`` absent: ``rename(staged, out)`` where folders can be exchanged (below), else the pointer layout;
- ``out`` a folder (the usual layout), on Linux: ``renameat2(staged, out, RENAME_EXCHANGE)`` (through
  ctypes) swaps the two folders in one step; the old bundle, now at the staged path, is deleted after;
- ``out`` a folder where RENAME_EXCHANGE does not exist (not Linux, old kernel or a file system without
  it; a folder made elsewhere and copied here): moving it to the pointer layout below takes two renames,
  so a kill between them leaves ``out`` missing and the old bundle complete at ``.NAME.versions/old-*``
  (logged as a warning); every later publish there is atomic;
- ``out`` a symbolic link (the pointer layout): the new bundle moves to ``.NAME.versions/<id>`` beside it
  and a new link replaces the old one with ``rename`` (atomic), then the old version is deleted.

The parent folder is fsynced after the switch. Leftovers of a kill (``.NAME.partial-*`` or an old version)
are hidden folders beside ``out`` and never what ``out`` names.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from cdd_common.atomic_file import fsync_dir, fsync_file

__all__ = ["exchange_supported", "publish_dir"]

_LOG = logging.getLogger("export.bundle_publish")
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}


def _renameat2() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    function = getattr(libc, "renameat2", None)
    if function is not None:
        function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        function.restype = ctypes.c_int
    return function


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically; False where the system cannot (then nothing changed)."""
    function = _renameat2()
    if function is None:
        return False
    if function(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        return False
    raise OSError(code, f"renameat2(RENAME_EXCHANGE) failed: {os.strerror(code)}", str(first), None, str(second))


def exchange_supported(directory: str | Path) -> bool:
    """Whether ``directory``'s file system swaps two folders atomically (tried on two scratch folders)."""
    scratch = [Path(directory) / f".exchange-probe-{uuid.uuid4().hex}-{i}" for i in range(2)]
    for path in scratch:
        path.mkdir()
    try:
        return _exchange(*scratch)
    finally:
        for path in scratch:
            shutil.rmtree(path, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    for folder, _, names in os.walk(root):
        for name in names:
            fsync_file(Path(folder) / name)
        fsync_dir(folder)


def publish_dir(staged: str | Path, out: str | Path, use_exchange: bool = True) -> Path:
    """Make the complete folder ``staged`` appear at ``out`` in one atomic step (see the module docstring);
    ``staged`` must sit in ``out``'s parent folder. ``use_exchange`` False forces the portable pointer
    layout (tests). Returns ``out``; raises OSError."""
    staged, out = Path(staged), Path(out)
    _fsync_tree(staged)
    if out.is_symlink():
        _switch_pointer(staged, out)
    elif not out.exists():
        if use_exchange and exchange_supported(out.parent):
            os.rename(staged, out)  # later publishes swap folders
            fsync_dir(out.parent)
        else:
            _switch_pointer(staged, out)  # later publishes swap links
    elif use_exchange and _exchange(staged, out):
        fsync_dir(out.parent)
        shutil.rmtree(staged)  # the old bundle, now at the staged path
    else:
        _LOG.warning("%s: no atomic folder exchange here; moving to the versioned pointer layout", out)
        old = _versions(out) / f"old-{uuid.uuid4().hex}"
        os.rename(out, old)  # a kill right here leaves `out` missing and the old bundle complete in `old`
        _switch_pointer(staged, out)
        shutil.rmtree(old)
    return out


def _versions(out: Path) -> Path:
    folder = out.parent / f".{out.name}.versions"
    folder.mkdir(exist_ok=True)
    return folder


def _switch_pointer(staged: Path, out: Path) -> None:
    previous = out.resolve() if out.is_symlink() else None
    version = _versions(out) / uuid.uuid4().hex
    os.rename(staged, version)
    fsync_dir(version.parent)
    link = out.parent / f".{out.name}.link-{uuid.uuid4().hex}"
    os.symlink(os.path.relpath(version, out.parent), link)
    os.replace(link, out)  # atomic: readers see the old link or the new one
    fsync_dir(out.parent)
    if previous is not None and previous.parent == version.parent and previous != version:
        shutil.rmtree(previous, ignore_errors=True)
