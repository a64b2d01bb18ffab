"""Size limits on the text fields of a request: gallery ids, item metadata and search filters.

A request over a limit is refused with `InvalidInput` (INVALID_ARGUMENT) naming the field, the size found
and the limit; the defaults live in `ServeConfig` (``max_id_bytes``, ``max_metadata_bytes``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from serving.errors import InvalidInput

__all__ = ["check_id", "check_metadata"]


def check_id(item_id: Any, where: str, max_bytes: int) -> None:
    """Raise InvalidInput unless ``item_id`` is a non-empty string of at most ``max_bytes`` UTF-8 bytes."""
    if not isinstance(item_id, str) or not item_id:
        raise InvalidInput(f"{where}: id must be a non-empty string, found {item_id!r}")
    size = len(item_id.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise InvalidInput(
            f"{where}: id is {size} bytes (UTF-8), the limit is {max_bytes} bytes (max_id_bytes); "
            f"use a shorter id (it starts {item_id[:40]!r})"
        )


def check_metadata(metadata: Mapping[str, Any] | None, where: str, max_bytes: int, what: str = "metadata") -> None:
    """Raise InvalidInput when the keys plus values of ``metadata`` (as text, UTF-8) exceed ``max_bytes``."""
    if not metadata:
        return
    size = sum(
        len(str(key).encode("utf-8", "surrogatepass"))
        + len((value if isinstance(value, str) else str(value)).encode("utf-8", "surrogatepass"))
        for key, value in metadata.items()
    )
    if size > max_bytes:
        raise InvalidInput(
            f"{where}: {what} is {size} bytes (keys plus values, UTF-8), the limit is {max_bytes} bytes "
            "(max_metadata_bytes); keep large data outside the gallery and store a reference to it"
        )
