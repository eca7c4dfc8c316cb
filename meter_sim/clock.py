"""Simulated time that runs faster than real time, sans-IO.

The clock never reads a time source itself: callers pass the current *real* time
(seconds from any monotonic origin, e.g. ``time.monotonic()`` or ``loop.time()``)
and get the simulated UTC datetime back. So tests are exact and the fleet can share one
clock between thousands of meters.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta


class ClockError(ValueError):
    """A clock was given a naive datetime, a non-positive speed or time going backwards."""


def require_aware(value: datetime, name: str = "time") -> datetime:
    """Return ``value`` converted to UTC; raise :class:`ClockError` if it is naive."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ClockError(f"{name} must be timezone-aware, got naive {value.isoformat()}")
    return value.astimezone(UTC)


class SimClock:
    """Simulated time = ``start + (real - real_origin) * speed``.

    ``speed`` is the number of simulated seconds per real second (60 means an hour of
    simulated time per real minute). Simulated time never goes backwards as long as the
    real time passed in does not.
    """

    __slots__ = ("_real_origin", "_speed", "_start")

    def __init__(self, start: datetime, speed: float = 1.0, *, real_origin: float) -> None:
        """Raise :class:`ClockError` if ``start`` is naive or ``speed`` is not a positive number."""
        if not math.isfinite(speed) or speed <= 0:
            raise ClockError(f"speed must be a positive finite number, got {speed!r}")
        if not math.isfinite(real_origin):
            raise ClockError(f"real_origin must be finite, got {real_origin!r}")
        self._start = require_aware(start, "start")
        self._speed = float(speed)
        self._real_origin = float(real_origin)

    @property
    def start(self) -> datetime:
        return self._start

    @property
    def speed(self) -> float:
        return self._speed

    def now(self, real: float) -> datetime:
        """Simulated UTC time at real time ``real`` (seconds, same origin as ``real_origin``)."""
        elapsed_us = round((real - self._real_origin) * self._speed * 1_000_000)
        return self._start + timedelta(microseconds=max(0, elapsed_us))

    def real_at(self, simulated: datetime) -> float:
        """The real time (seconds) at which simulated time reaches ``simulated``.

        Used to schedule work (the next telemetry interval) with ``loop.call_at``.
        """
        delta = (require_aware(simulated, "simulated") - self._start).total_seconds()
        return self._real_origin + delta / self._speed

    def real_seconds(self, simulated_seconds: float) -> float:
        """How many real seconds ``simulated_seconds`` of simulated time take."""
        return simulated_seconds / self._speed
