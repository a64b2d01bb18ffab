"""Errors of the gallery index: `GalleryIndexError` (an `InvalidInput` of the service's error family) and its
cases. Unknown ids map to NOT_FOUND, duplicate ids to ALREADY_EXISTS, the rest to INVALID_ARGUMENT."""

from __future__ import annotations

from serving.errors import InvalidInput

__all__ = [
    "DimensionError",
    "DuplicateIdError",
    "GalleryIndexError",
    "IndexBundleMismatch",
    "IndexCorruptError",
    "InvalidVectorsError",
    "UnknownIdError",
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
