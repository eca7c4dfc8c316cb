"""Retry backoff and the per-meter circuit breaker: pure, time and randomness passed in."""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from datetime import datetime, timedelta

__all__ = ["BreakerState", "CircuitBreaker", "RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Up to ``attempts`` tries of one poll; before try n+1 wait
    ``min(max_delay_s, base_delay_s * multiplier**(n-1))`` seconds, of which the last
    ``jitter`` fraction is random (so meters that failed together do not retry together).
    """

    attempts: int = 3
    base_delay_s: float = 0.05
    multiplier: float = 2.0
    max_delay_s: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {self.attempts}")
        if self.base_delay_s < 0 or self.max_delay_s < 0 or self.multiplier < 1:
            raise ValueError("delays must not be negative and the multiplier at least 1")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter must be within [0, 1], not {self.jitter}")

    def delay(self, failed_attempts: int, rng: random.Random) -> float:
        """Seconds to wait after ``failed_attempts`` (>= 1) failed tries."""
        if failed_attempts < 1:
            raise ValueError("the delay follows a failed attempt")
        ceiling = min(
            self.max_delay_s, self.base_delay_s * self.multiplier ** (failed_attempts - 1)
        )
        return ceiling * (1.0 - self.jitter) + ceiling * self.jitter * rng.random()


class BreakerState(enum.StrEnum):
    CLOSED = "closed"  # polls run normally
    OPEN = "open"  # the meter is skipped until the cool-down ends
    HALF_OPEN = "half_open"  # one probe poll decides: closed again, or open again


class CircuitBreaker:
    """Stops polling a meter after ``threshold`` consecutive failed polls.

    After ``cooldown`` one probe is let through (half-open); its success closes the
    breaker, its failure opens it for another cool-down.
    """

    __slots__ = ("_cooldown", "_failures", "_opened_at", "_state", "_threshold")

    def __init__(self, threshold: int, cooldown: timedelta) -> None:
        """Raise ValueError if ``threshold`` < 1 or ``cooldown`` is negative."""
        if threshold < 1:
            raise ValueError(f"threshold must be at least 1, not {threshold}")
        if cooldown < timedelta(0):
            raise ValueError("cooldown must not be negative")
        self._threshold = threshold
        self._cooldown = cooldown
        self._failures = 0
        self._state = BreakerState.CLOSED
        self._opened_at: datetime | None = None

    @property
    def state(self) -> BreakerState:
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    @property
    def opened_at(self) -> datetime | None:
        return self._opened_at

    def allow(self, now: datetime) -> bool:
        """Whether to poll now. An open breaker past its cool-down turns half-open and
        allows exactly this one probe."""
        if self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.OPEN:
            assert self._opened_at is not None
            if now - self._opened_at >= self._cooldown:
                self._state = BreakerState.HALF_OPEN
                return True
            return False
        return False  # half-open: the probe is already under way

    def record_success(self) -> None:
        self._failures = 0
        self._state = BreakerState.CLOSED
        self._opened_at = None

    def record_failure(self, now: datetime) -> None:
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN or self._failures >= self._threshold:
            self._state = BreakerState.OPEN
            self._opened_at = now
