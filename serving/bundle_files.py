"""Which files a bundle manifest may name, where they may live, and reading them as checked bytes.

Rules (stdlib only; `serving.bundle` applies them when it reads a manifest, backends when they load):

- every model file named in ``backends`` is a plain file name (no folder part, not absolute, not "." or
  "..") and is listed in ``files`` with its sha256, so no backend reads an unchecked file;
- a listed file resolves (symbolic links followed) to a regular file inside the bundle folder;
- a backend hands its runtime the very bytes whose sha256 was checked (`read_checked_file`), never a path
  that is opened again after the check.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "BundleError",
    "BundleFileError",
    "backend_file_name",
    "check_backend_files",
    "read_checked_file",
    "resolve_inside",
]


class BundleError(ValueError):
    """A bundle is missing, malformed, from another schema, or its files fail their checks
    (re-exported by `serving.bundle`, where it belongs)."""


class BundleFileError(BundleError):
    """A manifest names a file outside the bundle, not listed in ``files``, missing, or with another sha256."""


def backend_file_name(entry: Any) -> str | None:
    """The model file of one ``backends`` entry: the entry itself when it is a string, its ``file`` when it
    is a mapping (TensorRT: ``{"file": ..., "stamp": {...}}``), else None."""
    if isinstance(entry, str):
        return entry
    if isinstance(entry, Mapping):
        name = entry.get("file")
        return name if isinstance(name, str) else None
    return None


def _plain_name_problem(name: str) -> str | None:
    if not name or name in (".", ".."):
        return "is empty or a folder reference"
    if "/" in name or "\\" in name or "\0" in name or os.path.isabs(name):
        return "is a path, not a plain file name"
    return None


def check_backend_files(backends: Mapping[str, Any], files: Mapping[str, Any], source: str) -> None:
    """Raise BundleFileError unless every backend's model file is a plain name listed in ``files``.

    ``source`` names the manifest in the message."""
    for backend, entry in backends.items():
        name = backend_file_name(entry)
        if name is None:
            raise BundleFileError(
                f"{source}: backends[{backend!r}] is {entry!r}; expected a file name or "
                "{'file': NAME, ...}; re-export the bundle"
            )
        problem = _plain_name_problem(name)
        if problem:
            raise BundleFileError(
                f"{source}: backends[{backend!r}] names {name!r}, which {problem}; model files must sit in "
                "the bundle folder itself; re-export the bundle"
            )
        if name not in files:
            raise BundleFileError(
                f"{source}: backends[{backend!r}] names {name!r}, which is not listed in 'files' (listed: "
                f"{sorted(files)}), so its sha256 cannot be checked; re-export the bundle"
            )
    for name in files:
        problem = _plain_name_problem(str(name))
        if problem:
            raise BundleFileError(f"{source}: files lists {name!r}, which {problem}; re-export the bundle")


def resolve_inside(root: str | Path, name: str) -> Path:
    """``root / name`` with symbolic links resolved; raises BundleFileError when it leaves ``root``, is
    missing or is not a regular file."""
    base = Path(root).resolve()
    problem = _plain_name_problem(name)
    if problem:
        raise BundleFileError(f"{root}: bundle file {name!r} {problem}; re-export the bundle")
    path = (base / name).resolve()
    if not path.is_relative_to(base):
        raise BundleFileError(
            f"{root / name}: resolves to {path}, outside the bundle folder {base}; refusing to load it; "
            "re-export the bundle (bundle files must not be links out of the bundle)"
        )
    if not path.is_file():
        raise BundleFileError(f"{root / name}: missing or not a regular file; re-export the bundle")
    return path


def read_checked_file(root: str | Path, files: Mapping[str, Any], name: str) -> bytes:
    """The bytes of bundle file ``name``, after checking their size and sha256 against ``files[name]``.

    Hand these bytes to the runtime (``onnxruntime.InferenceSession(data)``, ...): what was checked is
    what runs. Raises BundleFileError naming the file."""
    if name not in files:
        raise BundleFileError(f"{root}: {name!r} is not listed in the manifest's files; re-export the bundle")
    path = resolve_inside(root, name)
    data = path.read_bytes()
    expected = files[name].get("sha256") if isinstance(files[name], Mapping) else None
    found = hashlib.sha256(data).hexdigest()
    if found != expected:
        raise BundleFileError(
            f"{path}: sha256 is {found}, manifest expects {expected}; the file was modified or corrupted "
            "after export; re-export the bundle"
        )
    return data
