"""Requests that cannot be parsed get INVALID_ARGUMENT, not gRPC's INTERNAL "Exception deserializing request!".

`lenient` wraps a handler's request deserializer so that bytes that are not a valid message (a corrupt
wire format, a string field that is not UTF-8) become an `Undecodable` value instead of an exception inside
gRPC; the request interceptor refuses it with INVALID_ARGUMENT and a one-line reason before admission.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Undecodable", "lenient"]


class Undecodable:
    """Stands for a request whose bytes did not parse; ``reason`` says why (protobuf's message)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def message(self, method: str) -> str:
        """The status details for the client."""
        return (
            f"the {method} request could not be parsed ({self.reason}); send a message built from "
            "protos/cdd/v1/retrieval.proto, with every string field in UTF-8"
        )


def lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserializer``, returning an `Undecodable` instead of raising (None stays None: raw bytes)."""
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError, or anything a parser raises
            return Undecodable(" ".join(str(exc).split())[:200] or type(exc).__name__)

    return deserialize
