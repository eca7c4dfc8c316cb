"""How many statements a poller's batch costs: per batch, not per meter, where the
answers are the same (PostgreSQL pays a round trip for each)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import Engine, event, select
from sqlalchemy.orm import Session, sessionmaker

from headend.ingest import Ingestor, PolledReading
from headend.models import Reading
from headend.registry import MeterRegistration, register_meter
from protocols.mqtt import TopicScheme
from protocols.quantities import Quantity
from tests.headend.test_consumption_pipeline import VEE

T0 = datetime(2026, 3, 2, tzinfo=UTC)
METERS = 12


def _meters(session_factory: sessionmaker[Session]) -> list[int]:
    with session_factory() as session, session.begin():
        return [
            register_meter(session, MeterRegistration(serial=f"PQ-{i}", phases=1)).id
            for i in range(METERS)
        ]


def _poll(meter_ids: list[int], k: int) -> list[PolledReading]:
    """Pass ``k`` (every 15 minutes): import energy rising, export held at zero."""
    ts = T0 + timedelta(minutes=15 * k)
    return [
        PolledReading(
            meter_id,
            ts,
            {
                Quantity.ENERGY_IMPORT_KWH: Decimal("0.125") * k,
                Quantity.ENERGY_EXPORT_KWH: Decimal(0),
            },
            ts + timedelta(seconds=2),
        )
        for meter_id in meter_ids
    ]


@contextmanager
def _statements(engine: Engine) -> Iterator[list[str]]:
    seen: list[str] = []

    def note(*args: object) -> None:
        seen.append(str(args[2]))

    event.listen(engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", note)


def test_a_meters_third_read_needs_no_query_of_its_own(
    engine: Engine, session_factory: sessionmaker[Session]
) -> None:
    meter_ids = _meters(session_factory)
    ingestor = Ingestor(session_factory, TopicScheme(), settings=VEE)
    for k in range(2):
        ingestor.ingest_polled(_poll(meter_ids, k))
    with _statements(engine) as seen:
        stats = ingestor.ingest_polled(_poll(meter_ids, 2))
    assert stats.readings_stored == 2 * METERS
    # The batch's statements do not grow with its meters: no per-register page of reads.
    assert len(seen) < METERS
    assert not [s for s in seen if "LIMIT" in s]


def test_registers_unchanged_since_before_the_window_are_flagged_with_one_look_up_each_kind(
    engine: Engine, session_factory: sessionmaker[Session]
) -> None:
    meter_ids = _meters(session_factory)
    ingestor = Ingestor(
        session_factory,
        TopicScheme(),
        settings=replace(VEE, zero_consumption_after=timedelta(hours=2)),
    )
    for k in range(12):
        with _statements(engine) as seen:
            ingestor.ingest_polled(_poll(meter_ids, k))
        # The earliest-read look-ups go to the driver as one batch: they never show up
        # one per register among the statements SQLAlchemy runs.
        assert len(seen) < METERS
    with session_factory() as session:
        flagged = session.execute(
            select(Reading.meter_id, Reading.ts).where(Reading.flags == "zero_consumption")
        ).all()
    # Export at zero since the first pass: flagged from two hours on, on every meter;
    # import rises and is never flagged.
    expected = {(m, T0 + timedelta(minutes=15 * k)) for m in meter_ids for k in range(8, 12)}
    assert set(flagged) == expected
