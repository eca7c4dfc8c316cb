"""Communication health: last seen, daily read success, silent meters."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from headend.health import (
    HealthError,
    read_success_rates,
    record_read_outcome,
    silent_meters,
)
from headend.models import Meter, Reading
from headend.registry import MeterRegistration, register_meter

DAY = date(2026, 11, 23)
MIDNIGHT = datetime(2026, 11, 23, tzinfo=UTC)
QUARTER = timedelta(minutes=15)


def add(
    session_factory: sessionmaker[Session],
    serial: str,
    lifecycle: str = "active",
    last_seen_at: datetime | None = None,
    created_at: datetime = MIDNIGHT - timedelta(days=30),
) -> int:
    with session_factory() as session, session.begin():
        meter = register_meter(session, MeterRegistration(serial=serial), actor="t")
        session.execute(
            update(Meter)
            .where(Meter.id == meter.id)
            .values(lifecycle=lifecycle, last_seen_at=last_seen_at, created_at=created_at)
        )
        return meter.id


def test_read_outcomes_are_counted_per_meter_and_utc_day(
    session_factory: sessionmaker[Session],
) -> None:
    meter_id = add(session_factory, "P-1")
    outcomes = [(1, True), (2, True), (3, False), (4, True), (25, True), (26, False)]
    with session_factory() as session, session.begin():
        for hour, ok in outcomes:
            record_read_outcome(
                session, meter_id, MIDNIGHT + timedelta(hours=hour), ok=ok, reason="timeout"
            )
    with session_factory() as session:
        rates = read_success_rates(
            session,
            since=DAY,
            until=DAY + timedelta(days=1),
            now=MIDNIGHT + timedelta(days=2),
            interval=QUARTER,
        )
        assert [(r.day, r.attempts, r.successes, r.rate, r.source) for r in rates] == [
            (DAY, 4, 3, Decimal("0.7500"), "polls"),
            (DAY + timedelta(days=1), 2, 1, Decimal("0.5000"), "polls"),
        ]
        assert rates[0].last_failure == "timeout"
        meter = session.get(Meter, meter_id)
        assert meter is not None
        assert meter.last_seen_at == MIDNIGHT + timedelta(hours=25)


def test_last_seen_never_moves_back(session_factory: sessionmaker[Session]) -> None:
    meter_id = add(session_factory, "P-1", last_seen_at=MIDNIGHT + timedelta(hours=5))
    with session_factory() as session, session.begin():
        record_read_outcome(session, meter_id, MIDNIGHT + timedelta(hours=1), ok=True)
    with session_factory() as session:
        meter = session.get(Meter, meter_id)
        assert meter is not None
        assert meter.last_seen_at == MIDNIGHT + timedelta(hours=5)


def test_a_pushing_meter_is_rated_by_the_intervals_it_delivered(
    session_factory: sessionmaker[Session],
) -> None:
    meter_id = add(session_factory, "MQ-1")
    # 72 of the day's 96 quarter-hours arrived (the last six hours are missing).
    with session_factory() as session, session.begin():
        for i in range(72):
            ts = MIDNIGHT + QUARTER * i
            session.add(
                Reading(
                    meter_id=meter_id,
                    quantity="energy_import_kwh",
                    ts=ts,
                    value=Decimal(i),
                    source="mqtt",
                    received_at=ts,
                )
            )
            session.add(
                Reading(
                    meter_id=meter_id,
                    quantity="voltage_v",
                    ts=ts,
                    value=Decimal(230),
                    source="mqtt",
                    received_at=ts,
                )
            )
    with session_factory() as session:
        (rate,) = read_success_rates(
            session, since=DAY, until=DAY, now=MIDNIGHT + timedelta(days=3), interval=QUARTER
        )
        assert (rate.attempts, rate.successes, rate.rate, rate.source) == (
            96,
            72,
            Decimal("0.7500"),
            "intervals",
        )


def test_today_counts_only_the_intervals_that_have_passed(
    session_factory: sessionmaker[Session],
) -> None:
    add(session_factory, "MQ-1")
    with session_factory() as session:
        (rate,) = read_success_rates(
            session, since=DAY, until=DAY, now=MIDNIGHT + timedelta(hours=2), interval=QUARTER
        )
        assert (rate.attempts, rate.successes, rate.rate) == (8, 0, Decimal("0.0000"))


def test_silent_meters_are_those_not_heard_from_for_n_intervals(
    session_factory: sessionmaker[Session],
) -> None:
    now = MIDNIGHT + timedelta(hours=12)
    add(session_factory, "FRESH", last_seen_at=now - QUARTER)
    add(session_factory, "EDGE", last_seen_at=now - 4 * QUARTER)
    add(session_factory, "QUIET", last_seen_at=now - 10 * QUARTER)
    add(session_factory, "NEVER", lifecycle="commissioned")
    add(session_factory, "STOCK", lifecycle="in_stock")
    add(session_factory, "GONE", lifecycle="decommissioned", last_seen_at=now - timedelta(days=9))
    with session_factory() as session:
        silent = silent_meters(session, now=now, interval=QUARTER, intervals=4)
        assert [(m.serial, m.intervals_missed) for m in silent] == [
            ("NEVER", None),
            ("QUIET", 10),
            ("EDGE", 4),
        ]


@pytest.mark.parametrize(
    ("interval", "intervals"), [(timedelta(0), 3), (QUARTER, 0), (-QUARTER, 2)]
)
def test_impossible_health_windows_are_refused(
    session_factory: sessionmaker[Session], interval: timedelta, intervals: int
) -> None:
    with session_factory() as session, pytest.raises(HealthError):
        silent_meters(session, now=MIDNIGHT, interval=interval, intervals=intervals)


def test_a_reversed_day_range_is_refused(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as session, pytest.raises(HealthError, match="since <= until"):
        read_success_rates(
            session, since=DAY, until=DAY - timedelta(days=1), now=MIDNIGHT, interval=QUARTER
        )
