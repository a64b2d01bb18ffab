"""Build a dataset folder next to its destination and publish it with one rename.

A kill or an error while writing never leaves a half-written dataset at the destination: the files go
to a hidden sibling folder first, and only a complete folder is renamed into place.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["staged_folder"]


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """Yield an empty sibling folder of ``out`` to fill. On normal exit it replaces ``out`` (a previous
    folder there is removed); on an exception it is deleted and ``out`` is left as it was."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        yield partial
        if out.exists():
            retired = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, retired)
            shutil.rmtree(retired)
        os.replace(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
