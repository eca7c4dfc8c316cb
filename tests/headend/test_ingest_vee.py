"""VEE through the database: validation, estimates and the consumption stream, as stored.

The pipeline test (test_consumption_pipeline.py) is the reference: the same deliveries go
through ``Ingestor.ingest`` here, and after every batch the stream and the estimates in
the database must equal a derivation from scratch over the stored reads, and the stream
must be exactly what the in-memory reference publishes.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from headend.consumption import IntervalConsumption, interval_consumption
from headend.estimation import estimate_gaps
from headend.ingest import InboundMessage, Ingestor, PolledReading
from headend.interface import (
    OffsetError,
    commit_offset,
    latest_consumption,
    load_offset,
    read_consumption,
)
from headend.models import ConsumptionEventRecord, Reading, ReadingEstimate, RejectedMessage
from headend.registry import MeterRegistration, register_meter
from headend.validation import Quality, RegisterRead, StoredRead
from protocols.mqtt import MeterChannel, TelemetryReport, TopicScheme
from protocols.quantities import Quantity
from tests.headend.test_consumption_pipeline import INTERVAL, VEE, Store, deliveries

SCHEME = TopicScheme()
T0 = datetime(2026, 3, 2, tzinfo=UTC)
NOW = T0 + timedelta(hours=13)
ENERGY = Quantity.ENERGY_IMPORT_KWH


def _meter(session_factory: sessionmaker[Session], *, rated_a: int = 60) -> tuple[int, str]:
    serial = f"V-{uuid.uuid4().hex[:10]}"
    with session_factory() as session, session.begin():
        meter = register_meter(
            session, MeterRegistration(serial=serial, phases=1, rated_max_current_a=rated_a)
        )
        return meter.id, serial


def _message(serial: str, read: RegisterRead, now: datetime = NOW) -> InboundMessage:
    report = TelemetryReport(seq=0, ts=read.timestamp, values={read.quantity: read.value})
    topic = SCHEME.meter_topic(serial, MeterChannel.TELEMETRY)
    return InboundMessage(topic=topic, payload=report.to_bytes(), received_at=now)


def _read(minutes: int, value: str) -> RegisterRead:
    return RegisterRead("M1", ENERGY, T0 + timedelta(minutes=minutes), Decimal(value))


def _stored_reads(session: Session, meter_id: int) -> list[StoredRead]:
    rows = session.execute(
        select(Reading.ts, Reading.value, Reading.quality).where(
            Reading.meter_id == meter_id, Reading.quantity == ENERGY.value
        )
    )
    # Stored at six places; the register's resolution (three) is what estimation splits in.
    return [
        StoredRead(str(meter_id), ENERGY, ts, v.quantize(Decimal("0.001")), Quality(q))
        for ts, v, q in rows
    ]


def _stream(session: Session, meter_id: int) -> list[IntervalConsumption]:
    rows = session.scalars(
        select(ConsumptionEventRecord)
        .where(ConsumptionEventRecord.meter_id == meter_id)
        .order_by(ConsumptionEventRecord.id)
    )
    return [
        IntervalConsumption(
            str(r.meter_id),
            Quantity(r.quantity),
            r.t_start,
            r.t_end,
            r.energy_kwh,
            Quality(r.quality),
            r.reason,
        )
        for r in rows
    ]


def _estimates(session: Session, meter_id: int) -> dict[datetime, Decimal]:
    rows = session.execute(
        select(ReadingEstimate.ts, ReadingEstimate.value).where(
            ReadingEstimate.meter_id == meter_id
        )
    )
    return dict(rows.all())


def _as_meter(records: list[IntervalConsumption], meter_id: int) -> list[IntervalConsumption]:
    return [replace(r, meter_id=str(meter_id)) for r in records]


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(delivery=deliveries())
def test_stored_stream_after_every_batch_equals_a_derivation_from_scratch(
    session_factory: sessionmaker[Session], delivery: tuple[list[list[RegisterRead]], int]
) -> None:
    batches, delivered = delivery
    meter_id, serial = _meter(session_factory)
    ingestor = Ingestor(session_factory, SCHEME)
    reference = Store()
    stored = duplicates = quarantined = 0
    for batch in batches:
        outcome = ingestor.ingest([_message(serial, r) for r in batch])
        reference.ingest(batch, NOW)
        stored += outcome.readings_stored
        duplicates += outcome.readings_duplicate
        quarantined += sum(outcome.rejected.values())
        with session_factory() as session:
            reads = _stored_reads(session, meter_id)
            stream = _stream(session, meter_id)
            estimates = _estimates(session, meter_id)
        latest = {r.key: r for r in stream}
        assert latest == {r.key: r for r in interval_consumption(reads, INTERVAL, VEE)}
        assert estimates == {e.timestamp: e.value for e in estimate_gaps(reads, INTERVAL, VEE)}
        assert stream == _as_meter(reference.stream, meter_id)

    assert stored + duplicates + quarantined == delivered
    with session_factory() as session:
        kept = session.scalar(select(func.count()).where(RejectedMessage.topic.contains(serial)))
    assert kept == quarantined


def test_a_late_read_replaces_estimates_and_publishes_corrections(
    session_factory: sessionmaker[Session],
) -> None:
    meter_id, serial = _meter(session_factory)
    ingestor = Ingestor(session_factory, SCHEME)
    ingestor.ingest([_message(serial, _read(0, "10.000")), _message(serial, _read(60, "10.400"))])
    with session_factory() as session:
        first = read_consumption(session, after_offset=0, limit=100)
        assert sorted(_estimates(session, meter_id)) == [
            T0 + timedelta(minutes=m) for m in (15, 30, 45)
        ]
    assert [e.quality for e in first] == ["estimated"] * 4
    assert [str(e.energy_kwh) for e in first] == ["0.100"] * 4
    assert all(e.supersedes is None for e in first)

    outcome = ingestor.ingest([_message(serial, _read(30, "10.100"))])
    assert outcome.readings_stored == 1
    with session_factory() as session:
        corrections = read_consumption(session, after_offset=first[-1].offset, limit=100)
        current = latest_consumption(session, meter_id)
        estimates = _estimates(session, meter_id)
    by_start = {e.t_start: e for e in first}
    assert [(c.supersedes, str(c.energy_kwh)) for c in corrections] == [
        (by_start[T0].offset, "0.050"),
        (by_start[T0 + INTERVAL].offset, "0.050"),
        (by_start[T0 + 2 * INTERVAL].offset, "0.150"),
        (by_start[T0 + 3 * INTERVAL].offset, "0.150"),
    ]
    assert [e.quality for e in current] == ["estimated"] * 4
    assert sum(e.energy_kwh for e in current) == Decimal("0.400")
    # The estimate at the late read's boundary is gone; the others are re-split around it.
    assert estimates == {
        T0 + INTERVAL: Decimal("10.050"),
        T0 + 3 * INTERVAL: Decimal("10.250"),
    }


def test_a_spike_is_stored_flagged_and_its_intervals_are_held(
    session_factory: sessionmaker[Session],
) -> None:
    meter_id, serial = _meter(session_factory)
    ingestor = Ingestor(session_factory, SCHEME)
    ingestor.ingest([_message(serial, _read(0, "10.000")), _message(serial, _read(15, "10.100"))])
    # 60 A x 230 V can register at most about 3.8 kWh in 15 minutes, not 500.
    outcome = ingestor.ingest([_message(serial, _read(30, "510.100"))])
    assert (outcome.readings_stored, outcome.readings_flagged) == (1, 1)
    with session_factory() as session:
        spike = session.scalars(
            select(Reading).where(Reading.meter_id == meter_id).order_by(Reading.ts.desc())
        ).first()
        current = latest_consumption(session, meter_id)
    assert spike is not None
    assert (spike.quality, spike.flags) == ("flagged", "spike")
    assert "advanced 500.000 kWh" in spike.reason
    assert [(e.quality, str(e.energy_kwh)) for e in current] == [
        ("measured", "0.100"),
        ("flagged", "500.000"),
    ]
    assert "flagged read" in current[-1].reason


def test_negative_consumption_is_flagged_and_held_not_charged(
    session_factory: sessionmaker[Session],
) -> None:
    meter_id, serial = _meter(session_factory)
    ingestor = Ingestor(session_factory, SCHEME)
    ingestor.ingest([_message(serial, _read(0, "10.000")), _message(serial, _read(15, "10.100"))])
    ingestor.ingest([_message(serial, _read(30, "9.000"))])
    with session_factory() as session:
        current = latest_consumption(session, meter_id)
        flags = session.scalars(
            select(Reading.flags).where(Reading.meter_id == meter_id).order_by(Reading.ts)
        ).all()
    assert flags == ["", "", "negative_consumption"]
    assert (current[-1].quality, current[-1].energy_kwh) == ("flagged", Decimal("-1.100"))


def test_a_read_from_the_future_is_quarantined_with_its_flag(
    session_factory: sessionmaker[Session],
) -> None:
    meter_id, serial = _meter(session_factory)
    ingestor = Ingestor(session_factory, SCHEME)
    outcome = ingestor.ingest([_message(serial, _read(60 * 24, "10.000"))])
    assert outcome.rejected == {"invalid_reading": 1}
    with session_factory() as session:
        [kept] = session.scalars(select(RejectedMessage)).all()
        assert session.scalar(select(func.count()).where(Reading.meter_id == meter_id)) == 0
    assert "future_timestamp" in kept.reason


def test_polled_reads_are_validated_and_published_like_mqtt_ones(
    session_factory: sessionmaker[Session],
) -> None:
    meter_id, _ = _meter(session_factory)
    ingestor = Ingestor(session_factory, SCHEME)
    polls = [
        PolledReading(meter_id, T0 + i * INTERVAL, {ENERGY: Decimal(10 + i)}, NOW) for i in range(3)
    ]
    outcome = ingestor.ingest_polled(polls)
    assert (outcome.readings_stored, outcome.readings_flagged) == (3, 0)
    assert outcome.consumption_published == 2
    unknown = PolledReading(meter_id + 1000, T0, {ENERGY: Decimal(1)}, NOW)
    assert ingestor.ingest_polled([unknown]).rejected == {"unknown_meter": 1}


def test_a_read_too_large_to_store_is_quarantined_not_failing_the_batch(
    session_factory: sessionmaker[Session],
) -> None:
    meter_id, serial = _meter(session_factory)
    ingestor = Ingestor(session_factory, SCHEME)
    huge = RegisterRead("M1", ENERGY, T0, Decimal("99999999999999"))
    outcome = ingestor.ingest([_message(serial, huge), _message(serial, _read(15, "1.0"))])
    assert outcome.readings_stored == 1
    assert outcome.rejected == {"invalid_reading": 1}
    with session_factory() as session:
        assert session.scalars(select(Reading.value).where(Reading.meter_id == meter_id)).all() == [
            Decimal("1.0")
        ]


def _rated_table(engine: Engine) -> Table:
    """The consumer's own effects: one row per rated interval, keyed like the stream."""
    table = Table(
        f"rated_{uuid.uuid4().hex[:8]}",
        MetaData(),
        Column("meter_id", Integer, primary_key=True),
        Column("t_start", String(40), primary_key=True),
        Column("energy", String(40)),
    )
    table.create(engine)
    return table


def _consume(session: Session, table: Table, consumer: str, *, crash_after: int | None) -> int:
    """One consumer pass: read after the stored offset, apply, commit the offset with it."""
    events = read_consumption(session, after_offset=load_offset(session, consumer), limit=3)
    for i, event in enumerate(events):
        if crash_after is not None and i == crash_after:
            raise RuntimeError("consumer crashed")
        key = {"meter_id": event.meter_id, "t_start": event.t_start.isoformat()}
        session.execute(table.delete().filter_by(**key))
        session.execute(insert(table).values(**key, energy=str(event.energy_kwh)))
    if events:
        commit_offset(session, consumer, events[-1].offset)
    return len(events)


def test_a_consumer_that_crashes_resumes_from_its_committed_offset(
    session_factory: sessionmaker[Session], engine: Engine
) -> None:
    meter_id, serial = _meter(session_factory)
    Ingestor(session_factory, SCHEME).ingest(
        [_message(serial, _read(15 * i, f"{10 + i}.000")) for i in range(8)]
    )
    table = _rated_table(engine)
    with session_factory() as session, session.begin():
        assert _consume(session, table, "balance", crash_after=None) == 3
    with pytest.raises(RuntimeError), session_factory() as session, session.begin():
        _consume(session, table, "balance", crash_after=1)
    with session_factory() as session:
        assert (
            load_offset(session, "balance")
            == read_consumption(session, after_offset=0, limit=3)[-1].offset
        )
    while True:
        with session_factory() as session, session.begin():
            if _consume(session, table, "balance", crash_after=None) == 0:
                break
    with session_factory() as session:
        rated = session.execute(select(table.c.energy)).scalars().all()
        everything = read_consumption(session, after_offset=0, limit=100)
        assert load_offset(session, "balance") == everything[-1].offset
    assert sorted(rated) == ["1.000"] * 7
    assert len(everything) == 7 and all(e.meter_id == meter_id for e in everything)


def test_offsets_refuse_bad_input_and_change_nothing(
    session_factory: sessionmaker[Session],
) -> None:
    _, serial = _meter(session_factory)
    Ingestor(session_factory, SCHEME).ingest(
        [_message(serial, _read(0, "1.000")), _message(serial, _read(15, "1.500"))]
    )
    with session_factory() as session, session.begin():
        [event] = read_consumption(session, after_offset=0, limit=10)
        commit_offset(session, "engine", event.offset)
    bad_calls = [
        lambda s: commit_offset(s, "engine", event.offset - 1),
        lambda s: commit_offset(s, "engine", event.offset + 1),
        lambda s: commit_offset(s, "engine", -1),
        lambda s: commit_offset(s, "", 0),
        lambda s: load_offset(s, "x" * 65),
        lambda s: read_consumption(s, after_offset=-1, limit=10),
        lambda s: read_consumption(s, after_offset=0, limit=0),
    ]
    for call in bad_calls:
        with pytest.raises(OffsetError), session_factory() as session, session.begin():
            call(session)
    with session_factory() as session:
        assert load_offset(session, "engine") == event.offset
        assert load_offset(session, "never-ran") == 0


def test_two_workers_ingesting_one_meter_at_once_publish_a_consistent_stream(
    session_factory: sessionmaker[Session],
) -> None:
    """Two ingestors in two threads get interleaved halves of one meter's reads (as two
    workers on a shared subscription do); the meter lock makes the result the same as one
    worker's: nothing lost, and the stream's latest records equal a derivation from
    scratch."""
    meter_id, serial = _meter(session_factory)
    reads = [_read(15 * i, f"{100 + i * Decimal('0.25')}") for i in range(40)]
    halves = [[_message(serial, r) for r in reads[i::2]] for i in (0, 1)]
    workers = [Ingestor(session_factory, SCHEME) for _ in halves]

    def run(worker: Ingestor, messages: list[InboundMessage]) -> None:
        for i in range(0, len(messages), 4):
            worker.ingest(messages[i : i + 4])

    threads = [
        threading.Thread(target=run, args=(w, h)) for w, h in zip(workers, halves, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(w.stats.readings_stored for w in workers) == len(reads)
    with session_factory() as session:
        stored = _stored_reads(session, meter_id)
        stream = _stream(session, meter_id)
        estimates = _estimates(session, meter_id)
    assert {r.key: r for r in stream} == {
        r.key: r for r in interval_consumption(stored, INTERVAL, VEE)
    }
    assert estimates == {}
    assert all(r.quality is Quality.MEASURED for r in {r.key: r for r in stream}.values())


def test_a_poll_with_a_naive_timestamp_is_quarantined_and_the_rest_stored(
    session_factory: sessionmaker[Session],
) -> None:
    meter_id, _ = _meter(session_factory)
    naive = PolledReading(meter_id, datetime(2026, 3, 2, 1, 0), {ENERGY: Decimal(5)}, NOW)
    good = PolledReading(meter_id, T0, {ENERGY: Decimal(4)}, NOW)
    outcome = Ingestor(session_factory, SCHEME).ingest_polled([naive, good])
    assert (outcome.readings_stored, outcome.rejected) == (1, {"invalid_reading": 1})


def _flags_by_minute(session_factory: sessionmaker[Session], meter_id: int) -> dict[int, str]:
    with session_factory() as session:
        rows = session.execute(
            select(Reading.ts, Reading.flags).where(Reading.meter_id == meter_id)
        ).all()
    return {int((ts - T0).total_seconds()) // 60: flags for ts, flags in rows}


def test_a_register_unchanged_since_before_the_loaded_window_is_zero_consumption(
    session_factory: sessionmaker[Session],
) -> None:
    # One read per batch: from the third batch on, the run's first read lies outside the
    # few intervals loaded around a batch, and only the look-up of the run's start finds it.
    meter_id, serial = _meter(session_factory)
    ingestor = Ingestor(
        session_factory, SCHEME, settings=replace(VEE, zero_consumption_after=timedelta(hours=2))
    )
    for minutes in range(0, 16 * 15, 15):
        ingestor.ingest([_message(serial, _read(minutes, "42.000"))])
    flags = _flags_by_minute(session_factory, meter_id)
    assert {m for m, f in flags.items() if f == "zero_consumption"} == set(range(120, 240, 15))
    assert all(flags[m] == "" for m in range(0, 120, 15))


def test_a_run_that_starts_inside_the_loaded_window_needs_no_look_up_and_is_not_flagged(
    session_factory: sessionmaker[Session],
) -> None:
    meter_id, serial = _meter(session_factory)
    ingestor = Ingestor(
        session_factory, SCHEME, settings=replace(VEE, zero_consumption_after=timedelta(hours=2))
    )
    # 42.000 once long ago, then consumption, then 42.500 held for an hour only: the old
    # read of another value ends the run, whatever was stored with the new value.
    ingestor.ingest([_message(serial, _read(0, "42.000"))])
    for minutes in range(15, 12 * 15, 15):
        value = "42.500" if minutes >= 120 else f"{42 + minutes / 1000:.3f}"
        ingestor.ingest([_message(serial, _read(minutes, value))])
    flags = _flags_by_minute(session_factory, meter_id)
    assert set(flags.values()) == {""}


def test_estimates_far_outside_the_loaded_window_are_replaced_when_their_gap_is_rederived(
    session_factory: sessionmaker[Session],
) -> None:
    meter_id, serial = _meter(session_factory)
    ingestor = Ingestor(session_factory, SCHEME)
    ingestor.ingest([_message(serial, _read(0, "10.000")), _message(serial, _read(300, "12.000"))])
    with session_factory() as session:
        assert len(_estimates(session, meter_id)) == 19
    # Its neighbours (and most estimates) lie beyond the few intervals loaded around it.
    ingestor.ingest([_message(serial, _read(150, "10.500"))])
    # A new read after another gap: re-derivation reaches back over the first gap, whose
    # estimates lie far outside the window loaded around the new read.
    ingestor.ingest([_message(serial, _read(600, "13.000"))])
    with session_factory() as session:
        reads = _stored_reads(session, meter_id)
        estimates = _estimates(session, meter_id)
    assert len(reads) == 4
    assert estimates == {e.timestamp: e.value for e in estimate_gaps(reads, INTERVAL, VEE)}
    assert len(estimates) == 37
