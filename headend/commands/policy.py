"""How long to wait for a meter, how often to try again, and how long a command lives."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Timeouts and retries for every command (one policy per queue).

    ``reply_timeout``: how long one sent message (command or read-back) waits for a reply.
    ``max_attempts``: how many times the command itself may be sent.
    ``max_readbacks``: how many read-back requests may be sent for one command.
    ``backoff_initial`` doubles per retry up to ``backoff_max``, then +-``jitter`` (a
    fraction) is applied so that retries to many meters after an outage spread out.
    ``default_ttl``: a command not confirmed this long after it was requested expires.
    ``meter_clock_tolerance``: added to a message's reply deadline for the ``expires_at``
    the meter checks against its own clock, so a meter whose clock is somewhat off does
    not ignore every command (the broker's MQTT 5 expiry uses the deadline itself).
    Raises ValueError for a policy that could never send anything.
    """

    reply_timeout: timedelta = timedelta(seconds=10)
    max_attempts: int = 3
    max_readbacks: int = 3
    backoff_initial: timedelta = timedelta(seconds=1)
    backoff_max: timedelta = timedelta(seconds=60)
    jitter: float = 0.2
    default_ttl: timedelta = timedelta(minutes=15)
    max_ttl: timedelta = timedelta(days=7)
    meter_clock_tolerance: timedelta = timedelta(seconds=30)

    def __post_init__(self) -> None:
        if self.reply_timeout <= timedelta(0):
            raise ValueError("reply_timeout must be positive")
        if self.max_attempts < 1 or self.max_readbacks < 1:
            raise ValueError("max_attempts and max_readbacks must be at least 1")
        if self.backoff_initial < timedelta(0) or self.backoff_max < self.backoff_initial:
            raise ValueError("need 0 <= backoff_initial <= backoff_max")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        if self.meter_clock_tolerance < timedelta(0):
            raise ValueError("meter_clock_tolerance must not be negative")
        if not timedelta(0) < self.default_ttl <= self.max_ttl:
            raise ValueError("need 0 < default_ttl <= max_ttl")

    def backoff(self, retry: int, rng: random.Random) -> timedelta:
        """The pause before retry number ``retry`` (1 for the first retry)."""
        exponent = min(max(retry - 1, 0), 64)
        seconds = min(
            self.backoff_initial.total_seconds() * 2.0**exponent, self.backoff_max.total_seconds()
        )
        if self.jitter:
            seconds *= rng.uniform(1 - self.jitter, 1 + self.jitter)
        return timedelta(seconds=seconds)
