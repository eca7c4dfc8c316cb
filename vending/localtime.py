"""The one place where gridvend's UTC instants meet a utility's local wall clock.

Inside gridvend every instant is a timezone-aware datetime in UTC. Tariffs are written in
local terms -- "peak is 07:00-10:00 on weekdays", "blocks reset on the 1st", "effective
from 1 July" -- so the pricing and rating code asks this module, and only this module, to
translate. Wall-clock rules follow the clock on the wall: on a daylight-saving day a band
that starts at 02:30 inside the skipped hour starts when the clock jumps, and a band
boundary inside the repeated hour is crossed twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_MICROSECOND = timedelta(microseconds=1)


class LocalTimeError(ValueError):
    code = "local_time_error"


class NaiveDatetime(LocalTimeError):
    code = "naive_datetime"


class UnknownTimeZone(LocalTimeError):
    code = "unknown_time_zone"


def zone(name: str) -> ZoneInfo:
    """The IANA zone `name` (e.g. "Africa/Johannesburg"); UnknownTimeZone if absent."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise UnknownTimeZone(f"unknown time zone {name!r}") from exc


def require_aware(instant: datetime, what: str = "instant") -> datetime:
    """`instant` converted to UTC; NaiveDatetime if it carries no UTC offset."""
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise NaiveDatetime(f"{what} must be timezone-aware, got {instant.isoformat()}")
    return instant.astimezone(UTC)


def wall_clock(instant: datetime, tz: ZoneInfo) -> datetime:
    """The naive local wall-clock reading at `instant` (which must be aware)."""
    return require_aware(instant).astimezone(tz).replace(tzinfo=None, fold=0)


def local_date(instant: datetime, tz: ZoneInfo) -> date:
    """The local calendar date at `instant`."""
    return wall_clock(instant, tz).date()


def day_start(day: date, tz: ZoneInfo) -> datetime:
    """The first UTC instant whose local date is `day`.

    When local midnight is skipped by a daylight-saving jump, fold=0 maps it to the
    instant of the jump, which is exactly the first instant of the day.
    """
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)


def day_length(day: date, tz: ZoneInfo) -> timedelta:
    """How long local `day` lasts (23, 24 or 25 hours around daylight saving)."""
    return day_start(day + timedelta(days=1), tz) - day_start(day, tz)


def next_month_start(day: date) -> date:
    return date(day.year + 1, 1, 1) if day.month == 12 else date(day.year, day.month + 1, 1)


def days_in_month(day: date) -> int:
    return (next_month_start(day) - day.replace(day=1)).days


def same_local_month(a: datetime, b: datetime, tz: ZoneInfo) -> bool:
    da, db = local_date(a, tz), local_date(b, tz)
    return (da.year, da.month) == (db.year, db.month)


@dataclass(frozen=True, slots=True)
class WallSegment:
    """A stretch [start, end) of UTC time over which the local wall clock stays within
    one local day and does not cross any of the requested boundaries; `wall_start` is
    the wall-clock reading at `start`."""

    start: datetime
    end: datetime
    wall_start: datetime

    @property
    def duration(self) -> timedelta:
        return self.end - self.start


def wall_segments(
    start: datetime,
    end: datetime,
    tz: ZoneInfo,
    boundaries: Callable[[date], Sequence[time]] = lambda _day: (),
) -> Iterator[WallSegment]:
    """Cut the UTC span [start, end) where local midnight or a wall-clock boundary falls.

    `boundaries(day)` gives the wall-clock times within local `day` at which the caller's
    rules change (e.g. time-of-use period starts). Segments also end at every UTC-offset
    change, so a segment has one constant offset and one local date. Both instants must
    be aware (NaiveDatetime otherwise); an empty span yields nothing.
    """
    u = require_aware(start, "start")
    stop = require_aware(end, "end")
    while u < stop:
        local = u.astimezone(tz)
        wall = local.replace(tzinfo=None, fold=0)
        next_wall = datetime.combine(wall.date() + timedelta(days=1), time(0))
        for b in boundaries(wall.date()):
            candidate = datetime.combine(wall.date(), b)
            if wall < candidate < next_wall:
                next_wall = candidate
        # While the offset holds, wall time and UTC advance together.
        nxt = min(u + (next_wall - wall), stop)
        if nxt.astimezone(tz).utcoffset() != local.utcoffset():
            nxt = _offset_change(u, nxt, tz)
        yield WallSegment(u, nxt, wall)
        u = nxt


def _offset_change(lo: datetime, hi: datetime, tz: ZoneInfo) -> datetime:
    """The first instant in (lo, hi] whose UTC offset differs from lo's (hi's differs)."""
    offset = lo.astimezone(tz).utcoffset()
    while hi - lo > _MICROSECOND:
        mid = lo + (hi - lo) / 2
        if mid.astimezone(tz).utcoffset() == offset:
            lo = mid
        else:
            hi = mid
    return hi
