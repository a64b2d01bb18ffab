"""`CallBudget`: what one call may still spend, checked by the service between units of work.

A call stops early when its deadline passes (DeadlineExceeded), its client cancels it or goes away
(Cancelled: the call's `RequestContext`, which the request interceptor cancels when gRPC reports the call
done), or its images add up to more decoded pixels than the per-call budget (TooLarge). The service checks
it before decoding each image, and the batcher before each engine chunk, so a call whose client has gone
stops within one image's decode and its admission slot is free again at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from serving.errors import Cancelled, DeadlineExceeded, TooLarge
from serving.request_context import RequestContext, current_request

__all__ = ["CallBudget"]


class CallBudget:
    """One call's ``deadline`` (absolute ``clock()`` seconds, None = none), its cancellation (``request``,
    default the current call's context) and ``max_pixels`` decoded pixels summed over its images."""

    def __init__(
        self,
        deadline: float | None,
        max_pixels: int,
        clock: Callable[[], float] = time.monotonic,
        request: RequestContext | None = None,
    ) -> None:
        self.deadline = deadline
        self.max_pixels = max_pixels
        self.spent_pixels = 0
        self._clock = clock
        self._request = request if request is not None else current_request()

    def check(self, where: str = "") -> None:
        """Raise DeadlineExceeded when the deadline passed, Cancelled when the client cancelled."""
        at = f" before {where}" if where else ""
        if self.deadline is not None and self._clock() >= self.deadline:
            raise DeadlineExceeded(f"the deadline passed{at}; the call's work was stopped; use a longer deadline")
        if self._request is not None and self._request.cancelled:
            raise Cancelled(f"the client cancelled the call; its work was stopped{at}")

    def charge(self, pixels: int, where: str) -> None:
        """Count ``pixels`` about to be decoded; TooLarge when the call's total goes over ``max_pixels``."""
        self.spent_pixels += pixels
        if self.spent_pixels > self.max_pixels:
            raise TooLarge(
                f"{where}: the images of this call declare {self.spent_pixels} pixels so far, this server decodes "
                f"at most {self.max_pixels} per call (max_call_pixels); send fewer or smaller images per call"
            )
