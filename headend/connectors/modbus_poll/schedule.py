"""Poll groups, interval boundaries and the clocks the scheduler runs on."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from protocols.modbus import Measurand, Profile
from protocols.quantities import Kind, Quantity

__all__ = [
    "DEFAULT_GROUPS",
    "ENERGY_GROUP",
    "INSTANTANEOUS_GROUP",
    "PollClock",
    "PollGroup",
    "ScaledClock",
    "SystemClock",
    "group_points",
    "interval_start",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class PollGroup:
    """Quantities read together. ``interval`` None means on demand only (``read_now``);
    otherwise polls run at every multiple of ``interval`` since 1970-01-01 UTC. With
    ``events``, a poll also reads the event count and, when it moved, the event log."""

    name: str
    quantities: frozenset[Quantity]
    interval: timedelta | None = None
    events: bool = False

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 32:
            raise ValueError("a poll group needs a name of 1..32 characters")
        if not self.quantities:
            raise ValueError(f"poll group {self.name!r} has no quantities")
        if self.interval is not None and (
            self.interval <= timedelta(0) or timedelta(days=1) % self.interval
        ):
            raise ValueError("an interval must divide a day (e.g. 1, 5, 15, 30, 60 minutes)")


ENERGY_GROUP = PollGroup(
    "energy",
    frozenset(q for q in Quantity if q.info.kind is Kind.CUMULATIVE) | {Quantity.CREDIT_KWH},
    timedelta(minutes=15),
    # The event count sits beside the credit register: it costs no extra request here.
    events=True,
)
INSTANTANEOUS_GROUP = PollGroup(
    "instantaneous",
    frozenset(
        q for q in Quantity if q.info.kind is Kind.INSTANTANEOUS and q is not Quantity.CREDIT_KWH
    ),
)
DEFAULT_GROUPS = (ENERGY_GROUP, INSTANTANEOUS_GROUP)


def group_points(profile: Profile, group: PollGroup) -> tuple[Measurand, ...]:
    """The whole-meter measurands of ``group`` that ``profile`` has (maybe none)."""
    return tuple(
        m for m in profile.measurands if m.phase is None and m.quantity in group.quantities
    )


def interval_start(moment: datetime, interval: timedelta) -> datetime:
    """The boundary of the interval holding ``moment`` (aligned to midnight UTC).

    Raises:
        ValueError: ``moment`` is naive.
    """
    if moment.tzinfo is None:
        raise ValueError("interval_start needs an aware datetime")
    elapsed = moment.astimezone(UTC) - _EPOCH
    return _EPOCH + (elapsed // interval) * interval


class PollClock(Protocol):
    """The scheduler's time: ``now`` (aware UTC) and a way to wait until a moment."""

    def now(self) -> datetime: ...

    async def sleep_until(self, moment: datetime) -> None: ...


class SystemClock:
    """Wall-clock UTC time."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep_until(self, moment: datetime) -> None:
        await asyncio.sleep(max(0.0, (moment - self.now()).total_seconds()))


class ScaledClock:
    """Accelerated time: ``start + (loop time - origin) * speed`` (simulated seconds per
    real second), for demos and tests against a simulator on the same time base."""

    def __init__(self, start: datetime, speed: float, *, origin: float | None = None) -> None:
        """``origin`` is an event-loop time (default: the running loop's now).

        Raises:
            ValueError: a naive ``start`` or a speed that is not positive.
            RuntimeError: no ``origin`` given and no event loop running.
        """
        if start.tzinfo is None:
            raise ValueError("start must be aware")
        if not speed > 0:
            raise ValueError("speed must be positive")
        self._start = start.astimezone(UTC)
        self._speed = float(speed)
        self._origin = asyncio.get_running_loop().time() if origin is None else origin

    def now(self) -> datetime:
        real = asyncio.get_running_loop().time() - self._origin
        return self._start + timedelta(seconds=max(0.0, real) * self._speed)

    async def sleep_until(self, moment: datetime) -> None:
        await asyncio.sleep(max(0.0, (moment - self.now()).total_seconds() / self._speed))
