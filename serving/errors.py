"""Domain errors raised by the retrieval service; transport-free (no gRPC types here).

The gRPC servicer maps each class to a status code in one table (``serving.grpc_servicer.STATUS_FOR``);
a new error class must be added there. Messages say what was expected, what was found, and the fix,
because they reach the client verbatim as the status details.
"""

from __future__ import annotations

__all__ = [
    "ServiceError",
    "InvalidInput",
    "TooLarge",
    "NotFound",
    "AlreadyExists",
    "DeadlineExceeded",
    "Unavailable",
]


class ServiceError(Exception):
    """Base of the errors a caller can fix or retry; anything else is a server bug (INTERNAL)."""


class InvalidInput(ServiceError, ValueError):
    """A request field is malformed or out of range (k, vector dim, empty id, both image and vector)."""


class TooLarge(ServiceError, ValueError):
    """A request is bigger than the server accepts (pixels, items per call)."""


class NotFound(ServiceError, KeyError):
    """An id named by the request is not in the gallery."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class AlreadyExists(ServiceError, ValueError):
    """An id being added is already in the gallery, or repeated within the request."""


class DeadlineExceeded(ServiceError, TimeoutError):
    """The caller's deadline passed before its work ran; the work was dropped."""


class Unavailable(ServiceError, RuntimeError):
    """The service is shutting down (batcher closed); retry on another replica."""
