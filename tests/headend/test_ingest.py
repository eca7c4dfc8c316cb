from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from headend.ingest import InboundMessage, Ingestor, PolledReading
from headend.models import Reading, RejectedMessage
from headend.registry import MeterRegistration, register_meter
from protocols.mqtt import MeterChannel, TelemetryReport, TopicScheme
from protocols.quantities import Quantity

SCHEME = TopicScheme()
NOW = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


def _meter(session_factory: sessionmaker[Session], serial: str = "M-1") -> int:
    with session_factory() as session, session.begin():
        return register_meter(session, MeterRegistration(serial=serial)).id


def _telemetry(serial: str, minute: int, kwh: str) -> InboundMessage:
    report = TelemetryReport(
        seq=minute,
        ts=datetime(2026, 11, 24, 8, minute, tzinfo=UTC),
        values={Quantity.ENERGY_IMPORT_KWH: Decimal(kwh)},
    )
    topic = SCHEME.meter_topic(serial, MeterChannel.TELEMETRY)
    return InboundMessage(topic=topic, payload=report.to_bytes(), received_at=NOW)


def _count(session_factory: sessionmaker[Session], model: type) -> int:
    with session_factory() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_a_redelivered_message_is_counted_as_duplicate_not_stored_twice(
    session_factory: sessionmaker[Session],
) -> None:
    _meter(session_factory)
    ingestor = Ingestor(session_factory, SCHEME)
    first = ingestor.ingest([_telemetry("M-1", 15, "10.5")])
    again = ingestor.ingest([_telemetry("M-1", 15, "10.5"), _telemetry("M-1", 15, "10.5")])
    assert (first.readings_stored, again.readings_stored, again.readings_duplicate) == (1, 0, 2)
    assert _count(session_factory, Reading) == 1


def test_a_second_different_value_for_a_stored_reading_is_quarantined(
    session_factory: sessionmaker[Session],
) -> None:
    _meter(session_factory)
    ingestor = Ingestor(session_factory, SCHEME)
    ingestor.ingest([_telemetry("M-1", 15, "10.5")])
    outcome = ingestor.ingest([_telemetry("M-1", 15, "11.0")])
    assert outcome.rejected == {"conflicting_duplicate": 1}
    with session_factory() as session:
        stored = session.scalars(select(Reading.value)).all()
        [rejected] = session.scalars(select(RejectedMessage)).all()
    assert stored == [Decimal("10.5")]
    assert "already stored as 10.5" in rejected.reason


def test_one_bad_message_does_not_hold_back_the_rest_of_its_batch(
    session_factory: sessionmaker[Session],
) -> None:
    _meter(session_factory)
    ingestor = Ingestor(session_factory, SCHEME)
    garbage = InboundMessage(topic="ami/v1/meters/M-1/telemetry", payload=b"\xff", received_at=NOW)
    outcome = ingestor.ingest([garbage, _telemetry("M-1", 30, "12.0")])
    assert outcome.readings_stored == 1
    assert outcome.rejected == {"bad_payload": 1}


def test_polled_readings_share_the_same_de_duplication(
    session_factory: sessionmaker[Session],
) -> None:
    meter_id = _meter(session_factory)
    ingestor = Ingestor(session_factory, SCHEME)
    ts = datetime(2026, 11, 24, 8, 15, tzinfo=UTC)
    poll = PolledReading(meter_id, ts, {Quantity.ENERGY_IMPORT_KWH: Decimal("10.5")}, NOW)
    assert ingestor.ingest_polled([poll]).readings_stored == 1
    assert ingestor.ingest([_telemetry("M-1", 15, "10.5")]).readings_duplicate == 1
    conflicting = PolledReading(meter_id, ts, {Quantity.ENERGY_IMPORT_KWH: Decimal("9")}, NOW)
    assert ingestor.ingest_polled([conflicting]).rejected == {"conflicting_duplicate": 1}
