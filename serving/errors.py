"""The one family of errors a caller can fix or retry (transport-free: no gRPC types here).

Every case derives from `ServiceError`; the gallery index's errors (`serving.index.errors`) and the image
decoder's (`serving.preprocess`) are members too. The gRPC servicer maps them to status codes in one table
(``serving.grpc_servicer.STATUS_FOR``). Messages say what was expected, what was found, and the fix,
because they reach the client verbatim as the status details.
"""

from __future__ import annotations

__all__ = [
    "ServiceError",
    "InvalidInput",
    "TooLarge",
    "DeadlineExceeded",
    "Unavailable",
    "Overloaded",
    "Cancelled",
    "StorageFull",
    "StorageFailed",
]


class ServiceError(Exception):
    """Base of the errors a caller can fix or retry; anything else is a server bug (INTERNAL)."""


class InvalidInput(ServiceError, ValueError):
    """A request field is malformed or out of range (k, vector dim, empty id, both image and vector)."""


class TooLarge(ServiceError, ValueError):
    """A request is bigger than the server accepts (pixels, items per call)."""


class DeadlineExceeded(ServiceError, TimeoutError):
    """The caller's deadline passed before its work ran; the work was dropped."""


class Unavailable(ServiceError, RuntimeError):
    """The service is shutting down (batcher closed); retry on another replica."""


class Overloaded(ServiceError, RuntimeError):
    """The server is at its concurrent-call or queue limit and refused the work at once; retry later."""


class Cancelled(ServiceError, RuntimeError):
    """The client cancelled the call; its queued work was dropped."""


class StorageFull(ServiceError, RuntimeError):
    """A change could not be made durable because the disk (or quota) is full; nothing was changed, reads
    keep working, and the same change succeeds once space is freed."""


class StorageFailed(Unavailable):
    """A change could not be made durable because of an I/O error; nothing was changed; retry later."""
