from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from headend.ingest import InboundMessage, Ingestor, PolledReading
from headend.models import Reading, RejectedMessage
from headend.registry import MeterRegistration, MeterUpdate, register_meter, update_meter
from protocols.mqtt import MeterChannel, TelemetryReport, TopicScheme
from protocols.quantities import Quantity

SCHEME = TopicScheme()
NOW = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


def _meter(session_factory: sessionmaker[Session], serial: str = "M-1") -> int:
    with session_factory() as session, session.begin():
        return register_meter(session, MeterRegistration(serial=serial)).id


def _telemetry(
    serial: str, minute: int, kwh: str, extra: dict[Quantity, Decimal] | None = None
) -> InboundMessage:
    report = TelemetryReport(
        seq=minute,
        ts=datetime(2026, 11, 24, 8, minute, tzinfo=UTC),
        values={Quantity.ENERGY_IMPORT_KWH: Decimal(kwh), **(extra or {})},
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


def _readings_of(session_factory: sessionmaker[Session], meter_id: int) -> list[Decimal]:
    with session_factory() as session:
        query = select(Reading.value).where(Reading.meter_id == meter_id).order_by(Reading.ts)
        return list(session.scalars(query))


def _move_comm_ids(session_factory: sessionmaker[Session], moves: list[tuple[int, str]]) -> None:
    with session_factory() as session, session.begin():
        for meter_id, comm_id in moves:
            update_meter(session, meter_id, MeterUpdate(comm_id=comm_id), actor="test")


def test_a_comm_id_moved_to_another_meter_stores_its_next_batch_under_that_meter(
    session_factory: sessionmaker[Session],
) -> None:
    first, second = _meter(session_factory, "M-1"), _meter(session_factory, "M-2")
    ingestor = Ingestor(session_factory, SCHEME)
    ingestor.ingest([_telemetry("M-1", 15, "10.5"), _telemetry("M-2", 15, "20.5")])
    # M-1 now answers as M-9, and M-2 (the serial stays) takes over the comm id M-1.
    _move_comm_ids(session_factory, [(first, "M-9"), (second, "M-1")])
    outcome = ingestor.ingest([_telemetry("M-1", 30, "21.0"), _telemetry("M-9", 30, "11.0")])
    assert (outcome.readings_stored, outcome.rejected) == (2, {})
    assert _readings_of(session_factory, first) == [Decimal("10.5"), Decimal("11.0")]
    assert _readings_of(session_factory, second) == [Decimal("20.5"), Decimal("21.0")]


def test_a_comm_id_no_longer_in_the_registry_is_rejected_as_an_unknown_meter(
    session_factory: sessionmaker[Session],
) -> None:
    meter_id = _meter(session_factory, "M-1")
    ingestor = Ingestor(session_factory, SCHEME)
    assert ingestor.ingest([_telemetry("M-1", 15, "10.5")]).readings_stored == 1
    _move_comm_ids(session_factory, [(meter_id, "M-9")])
    for minute in (30, 45):  # and again once the head-end has seen it gone
        outcome = ingestor.ingest([_telemetry("M-1", minute, "11.0")])
        assert (outcome.readings_stored, outcome.rejected) == (0, {"unknown_meter": 1})
    assert _readings_of(session_factory, meter_id) == [Decimal("10.5")]
    assert _count(session_factory, RejectedMessage) == 2


def test_a_value_too_large_to_store_is_rejected_and_the_rest_of_its_message_stored(
    session_factory: sessionmaker[Session],
) -> None:
    meter_id = _meter(session_factory)
    ingestor = Ingestor(session_factory, SCHEME)
    huge = {Quantity.VOLTAGE_V: Decimal("1E+13")}
    # The first batch of a meter and a later one (its meter id then known beforehand).
    for minute, kwh in ((15, "10.5"), (30, "11.0")):
        outcome = ingestor.ingest([_telemetry("M-1", minute, kwh, huge)])
        assert (outcome.readings_stored, outcome.rejected) == (1, {"invalid_reading": 1})
    assert _readings_of(session_factory, meter_id) == [Decimal("10.5"), Decimal("11.0")]
    with session_factory() as session:
        reasons = session.scalars(select(RejectedMessage.reason)).all()
    assert len(reasons) == 2
    assert all("outside the storable range" in reason for reason in reasons)
