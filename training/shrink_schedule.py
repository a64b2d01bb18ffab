"""The shrink schedule of a CDD run: how far the reset set may have grown at each point of training.

The paper's premise is that the student loses capacity *gradually* while it keeps learning from its
teacher. With a budget, gradient resetting could otherwise remove everything the budget allows in a few
steps (large ``cdd.ratio`` proposals admitted whole). The schedule paces it: at run fraction ``f`` the
exported network may cost no less than

    full - s(f) * (full - budget)

where ``s`` rises from 0 at ``start`` (when resetting starts) to exactly 1 at ``end`` (``cdd.shrink_end``):
``cubic`` is gradual magnitude pruning's curve (Zhu & Gupta 2017: fast early, slow near the final size,
``s = 1 - (1 - p)^3``), ``linear`` is ``s = p``, and ``none`` is ``s = 1`` throughout (no pacing: the budget
alone stops growth). ``geometric`` removes the same share of what is left in every equal stretch of the
shrink phase: the limit is ``full * (budget / full)^p``, so the last cuts, taken from an already small
network, are as gentle relative to its size as the first (linear cuts the same absolute amount each time,
a third of what is left near a 20% budget). ``p = (f - start) / (end - start)`` clipped to [0, 1]. The
schedule is a pure function of the run fraction, so a resumed run continues the same curve.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SHRINK_CURVES", "ShrinkSchedule"]

SHRINK_CURVES = ("cubic", "linear", "geometric", "none")
"""Values of ``cdd.shrink_curve``."""


@dataclass(frozen=True)
class ShrinkSchedule:
    """``curve`` from :data:`SHRINK_CURVES`; ``start`` and ``end`` are fractions of the run (0 <= start < end
    <= 1, unchecked for ``none``)."""

    curve: str
    start: float
    end: float

    def __post_init__(self) -> None:
        if self.curve not in SHRINK_CURVES:
            raise ValueError(f"cdd.shrink_curve must be one of {SHRINK_CURVES}, found {self.curve!r}")
        if self.curve != "none" and not 0 <= self.start < self.end <= 1:
            raise ValueError(f"the shrink phase must start before it ends, within the run: resetting starts at "
                             f"{self.start:.3f} of the run and cdd.shrink_end = {self.end}; set cdd.shrink_end "
                             f"in ({self.start:.3f}, 1] or start resetting earlier (cdd.grg_start_epoch)")

    @property
    def paced(self) -> bool:
        return self.curve != "none"

    def progress(self, run_fraction: float) -> float:
        """s in [0, 1]: the share of the way from the full network to the budget allowed at ``run_fraction``
        (for ``geometric``: of the way in log-cost); exactly 1.0 from ``end`` on (and always, for ``none``)."""
        if not self.paced or run_fraction >= self.end:
            return 1.0
        p = min(max((run_fraction - self.start) / (self.end - self.start), 0.0), 1.0)
        return 1.0 - (1.0 - p) ** 3 if self.curve == "cubic" else p

    def allowed(self, full: float, final: float, run_fraction: float) -> float:
        """The scheduled limit between ``full`` (the unpruned cost) and ``final`` (the budget) at ``run_fraction``."""
        s = self.progress(run_fraction)
        if s >= 1.0:
            return final
        if self.curve == "geometric" and full > 0 and final > 0:
            return full * (final / full) ** s
        return full - s * (full - final)
