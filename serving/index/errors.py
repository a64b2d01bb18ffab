"""Errors of the gallery index: `GalleryIndexError` (an `InvalidInput` of the service's error family) and its
cases. Unknown ids map to NOT_FOUND, duplicate ids to ALREADY_EXISTS, the rest to INVALID_ARGUMENT."""

from __future__ import annotations

import errno

from serving.errors import InvalidInput, StorageFailed, StorageFull

__all__ = [
    "DimensionError",
    "DuplicateIdError",
    "GalleryIndexError",
    "IndexBundleMismatch",
    "IndexCorruptError",
    "InvalidVectorsError",
    "LogDamagedError",
    "UnknownIdError",
    "storage_error",
]


class GalleryIndexError(InvalidInput):
    """Base class of every gallery-index error (a ValueError); the message names what was expected and found."""


class DuplicateIdError(GalleryIndexError):
    """`add` got an id that is already in the index (or twice in one call); nothing was added."""


class UnknownIdError(GalleryIndexError):
    """`remove` (or a lookup) got ids that are not in the index; nothing was removed."""


class DimensionError(GalleryIndexError):
    """Vectors or queries have the wrong dimension or rank for this index."""


class InvalidVectorsError(GalleryIndexError):
    """Vectors are not finite, not unit-norm, or do not line up with their ids / metadata."""


class IndexBundleMismatch(GalleryIndexError):
    """The index was built with another model bundle than the one serving it; rebuild the index."""


class IndexCorruptError(GalleryIndexError):
    """An index directory is missing files, fails its checksums, or its parts disagree."""


class LogDamagedError(IndexCorruptError):
    """The write log is damaged before its end (not a torn tail); the index is refused rather than
    dropping the acknowledged changes after the damage. `cdd-index repair` salvages what is intact."""


_FULL = (errno.ENOSPC, errno.EDQUOT)


def storage_error(exc: OSError, action: str) -> StorageFull | StorageFailed:
    """The one-line service error for an OSError that stopped ``action`` ("the change", "the snapshot")
    from reaching the disk: StorageFull for ENOSPC / EDQUOT, StorageFailed for any other I/O error.
    The message holds no server path (it reaches clients); the caller logs the path."""
    name = errno.errorcode.get(exc.errno or 0, "no errno")
    detail = f"{exc.strerror or exc}, {name}"
    if exc.errno in _FULL:
        return StorageFull(
            f"{action} was not made: the gallery's disk is full ({detail}); nothing was changed and searches keep "
            "working; free disk space (or raise the quota) and retry"
        )
    return StorageFailed(
        f"{action} was not made: I/O error on the gallery's disk ({detail}); nothing was changed and searches "
        "keep working; check the disk, then retry"
    )
