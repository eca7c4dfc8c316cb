"""Communication health: when each meter was last heard from, how many of its reads succeed
per day, and which meters have gone silent.

Two sources feed the daily success rate:

* polled meters (Modbus): the poller calls ``record_read_outcome`` for every read attempt,
  which counts attempts and successes per meter and UTC day in ``meter_read_stats``;
* pushing meters (MQTT): they are not asked, so the rate is the interval readings received
  (``energy_import_kwh`` readings stored) over the intervals the day had while the meter
  was registered.

Rates are Decimals rounded half-even to four places (0.9375 = 93.75 %).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from headend.models import Meter, MeterLifecycle, MeterReadStats, Reading
from protocols.quantities import Quantity

# Meters that are expected to talk; a meter in stock or taken down is not "silent".
EXPECTED_TO_TALK = (
    MeterLifecycle.COMMISSIONED,
    MeterLifecycle.ACTIVE,
    MeterLifecycle.SUSPENDED,
)
_RATE_QUANTUM = Decimal("0.0001")
_FAILURE_TEXT_MAX = 500


class HealthError(ValueError):
    """A health query with impossible parameters (non-positive interval, reversed days)."""


def _rate(successes: int, attempts: int) -> Decimal | None:
    if attempts <= 0:
        return None
    ratio = Decimal(min(successes, attempts)) / Decimal(attempts)
    return ratio.quantize(_RATE_QUANTUM, rounding=ROUND_HALF_EVEN)


def record_read_outcome(
    session: Session, meter_id: int, at: datetime, *, ok: bool, reason: str = ""
) -> None:
    """Count one read attempt of ``meter_id`` at the aware time ``at`` (caller's transaction).

    A success also moves the meter's ``last_seen_at`` forward (never back). Safe under
    concurrent pollers: the day's counters are incremented in one upsert.

    Raises:
        HealthError: ``at`` is naive.
    """
    if at.tzinfo is None:
        raise HealthError("read times must be timezone-aware")
    at = at.astimezone(UTC)
    values = {
        "meter_id": meter_id,
        "day": at.date(),
        "attempts": 1,
        "successes": int(ok),
        "last_failure": "" if ok else reason[:_FAILURE_TEXT_MAX],
    }
    dialect = session.get_bind().dialect.name
    insert: Any = (
        postgresql.insert(MeterReadStats)
        if dialect == "postgresql"
        else sqlite.insert(MeterReadStats)
    )
    increments: dict[str, Any] = {
        "attempts": MeterReadStats.attempts + 1,
        "successes": MeterReadStats.successes + int(ok),
    }
    if not ok:
        increments["last_failure"] = insert.excluded.last_failure
    session.execute(
        insert.values(**values).on_conflict_do_update(
            index_elements=["meter_id", "day"], set_=increments
        )
    )
    if ok:
        session.execute(
            update(Meter)
            .where(
                Meter.id == meter_id,
                or_(Meter.last_seen_at.is_(None), Meter.last_seen_at < at),
            )
            .values(last_seen_at=at)
        )


@dataclass(frozen=True, slots=True)
class SilentMeter:
    """A meter not heard from within the window; ``intervals_missed`` counts whole
    intervals since it was last seen (None if it was never seen)."""

    meter_id: int
    serial: str
    lifecycle: str
    protocol: str
    online: bool | None
    last_seen_at: datetime | None
    intervals_missed: int | None


def silent_meters(
    session: Session,
    *,
    now: datetime,
    interval: timedelta,
    intervals: int,
    lifecycles: Iterable[MeterLifecycle] = EXPECTED_TO_TALK,
    limit: int = 1000,
) -> list[SilentMeter]:
    """Meters in ``lifecycles`` not heard from for ``intervals`` intervals before ``now``,
    longest silent first (never-seen meters first of all).

    Raises:
        HealthError: ``interval`` is not positive or ``intervals`` is below 1.
    """
    if interval <= timedelta(0) or intervals < 1:
        raise HealthError("interval must be positive and intervals at least 1")
    cutoff = now - interval * intervals
    rows = session.scalars(
        select(Meter)
        .where(
            Meter.lifecycle.in_([s.value for s in lifecycles]),
            or_(Meter.last_seen_at.is_(None), Meter.last_seen_at <= cutoff),
        )
        .order_by(Meter.last_seen_at.is_not(None), Meter.last_seen_at, Meter.id)
        .limit(limit)
    )
    return [
        SilentMeter(
            meter_id=m.id,
            serial=m.serial,
            lifecycle=m.lifecycle,
            protocol=m.protocol,
            online=m.online,
            last_seen_at=m.last_seen_at,
            intervals_missed=(now - m.last_seen_at) // interval if m.last_seen_at else None,
        )
        for m in rows
    ]


@dataclass(frozen=True, slots=True)
class DailyReadRate:
    """Reads of one meter on one UTC day. ``source`` is ``polls`` (attempts counted by
    the poller) or ``intervals`` (expected intervals of a pushing meter)."""

    meter_id: int
    serial: str
    day: date
    attempts: int
    successes: int
    rate: Decimal | None
    source: str
    last_failure: str = ""


def _utc_day(session: Session, column: Any) -> ColumnElement[Any]:
    if session.get_bind().dialect.name == "postgresql":
        return func.date(func.timezone("UTC", column))
    return func.date(column)


def _as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def read_success_rates(
    session: Session,
    *,
    since: date,
    until: date,
    now: datetime,
    interval: timedelta,
    meter_id: int | None = None,
) -> list[DailyReadRate]:
    """Read success per meter and UTC day for days ``since``..``until`` (inclusive),
    ordered by day then meter. Meters not expected to talk are left out.

    Raises:
        HealthError: ``since`` after ``until``, a range over 366 days, or a non-positive
            ``interval``.
    """
    if since > until or (until - since).days > 366:
        raise HealthError("give since <= until, at most 366 days apart")
    if interval <= timedelta(0):
        raise HealthError("interval must be positive")
    meter_query = select(Meter).where(Meter.lifecycle.in_([s.value for s in EXPECTED_TO_TALK]))
    if meter_id is not None:
        meter_query = meter_query.where(Meter.id == meter_id)
    meters = {m.id: m for m in session.scalars(meter_query)}
    if not meters:
        return []
    polls: dict[tuple[int, date], MeterReadStats] = {
        (s.meter_id, s.day): s
        for s in session.scalars(
            select(MeterReadStats).where(
                MeterReadStats.meter_id.in_(meters),
                MeterReadStats.day >= since,
                MeterReadStats.day <= until,
            )
        )
    }
    start = datetime.combine(since, time(), UTC)
    end = datetime.combine(until + timedelta(days=1), time(), UTC)
    day_of = _utc_day(session, Reading.ts)
    received: dict[tuple[int, date], int] = {
        (mid, _as_date(day)): count
        for mid, day, count in session.execute(
            select(Reading.meter_id, day_of, func.count())
            .where(
                and_(
                    Reading.meter_id.in_(meters),
                    Reading.quantity == Quantity.ENERGY_IMPORT_KWH.value,
                    Reading.source != "commissioning",
                    Reading.ts >= start,
                    Reading.ts < end,
                )
            )
            .group_by(Reading.meter_id, day_of)
        )
    }
    rates: list[DailyReadRate] = []
    day = since
    while day <= until:
        day_start = datetime.combine(day, time(), UTC)
        day_end = day_start + timedelta(days=1)
        for mid, meter in sorted(meters.items()):
            stats = polls.get((mid, day))
            if stats is not None:
                rates.append(
                    DailyReadRate(
                        mid,
                        meter.serial,
                        day,
                        stats.attempts,
                        stats.successes,
                        _rate(stats.successes, stats.attempts),
                        "polls",
                        stats.last_failure,
                    )
                )
                continue
            window_start = max(day_start, meter.created_at)
            window_end = min(day_end, now)
            expected = max(0, (window_end - window_start) // interval)
            got = received.get((mid, day), 0)
            if expected == 0 and got == 0:
                continue  # the meter did not exist yet, or the day has not begun
            rates.append(
                DailyReadRate(
                    mid, meter.serial, day, expected, got, _rate(got, expected), "intervals"
                )
            )
        day += timedelta(days=1)
    return rates
