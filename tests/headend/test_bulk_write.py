"""Rows written through ``BulkStatement`` (straight to the driver) are stored exactly as the
ORM stores them: the same raw column values in the database, the same values read back."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from headend.bulk_write import BulkStatement
from headend.connectors.modbus_models import ModbusPollOutcome
from headend.connectors.modbus_poll.recorder import _INSERT_OUTCOMES
from headend.ingest import _bulk_insert_ignoring, _table
from headend.models import ConsumptionEventRecord, Meter, Reading, ReadingEstimate
from headend.registry import MeterRegistration, register_meter

T0 = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
# Same instants written in another zone: both paths must store them as UTC.
PLUS_TWO = timezone(timedelta(hours=2))


def _meters(session_factory: sessionmaker[Session], count: int) -> list[int]:
    with session_factory() as session, session.begin():
        return [
            register_meter(session, MeterRegistration(serial=f"BW-{i}")).id for i in range(count)
        ]


def _reading_rows(meter_ids: list[int]) -> list[dict[str, Any]]:
    rows = []
    for n, meter_id in enumerate(meter_ids):
        for k, value in enumerate(["1234.567", "0.000001", "-12.5", "8999999999999.999999"]):
            ts = T0 + timedelta(minutes=15 * k, microseconds=n)
            rows.append(
                {
                    "meter_id": meter_id,
                    "quantity": "energy_import_kwh",
                    "ts": ts.astimezone(PLUS_TWO) if n % 2 else ts,
                    "value": Decimal(value),
                    "source": "mqtt",
                    "received_at": T0 + timedelta(hours=1, seconds=k),
                    "quality": "flagged" if k == 2 else "measured",
                    "flags": "spike" if k == 2 else "",
                    "reason": "a reason" if k == 2 else "",
                }
            )
    return rows


def _raw(session_factory: sessionmaker[Session], table: str, columns: str) -> list[tuple[Any, ...]]:
    """The values as the database holds them, through the driver with no type processing."""
    with session_factory() as session:
        sql = f"SELECT {columns} FROM {table} ORDER BY {columns}"
        return [tuple(row) for row in session.connection().exec_driver_sql(sql)]


def _models(session_factory: sessionmaker[Session], model: type[Any]) -> list[tuple[Any, ...]]:
    """The rows read back through the model, without their ids."""
    with session_factory() as session:
        columns = [c.key for c in model.__table__.columns if c.key != "id"]
        records = session.scalars(select(model)).all()
        return sorted(tuple(getattr(r, c) for c in columns) for r in records)


def _same_as_orm(
    session_factory: sessionmaker[Session],
    model: type[Any],
    rows: list[dict[str, Any]],
    bulk: Callable[[Session], int],
) -> None:
    table = model.__table__.name
    columns = ", ".join(rows[0])
    with session_factory() as session, session.begin():
        session.add_all(model(**row) for row in rows)
    by_orm = (_raw(session_factory, table, columns), _models(session_factory, model))
    with session_factory() as session, session.begin():
        session.execute(delete(model))
    with session_factory() as session, session.begin():
        assert bulk(session) == len(rows)
    by_bulk = (_raw(session_factory, table, columns), _models(session_factory, model))
    assert by_bulk == by_orm


def test_bulk_inserted_readings_are_stored_exactly_as_the_orm_stores_them(
    session_factory: sessionmaker[Session],
) -> None:
    rows = _reading_rows(_meters(session_factory, 3))
    statement = BulkStatement(insert(Reading), list(rows[0]))
    _same_as_orm(session_factory, Reading, rows, lambda s: statement.execute(s.connection(), rows))


def test_bulk_inserted_estimates_and_stream_records_are_stored_as_the_orm_stores_them(
    session_factory: sessionmaker[Session],
) -> None:
    [meter_id] = _meters(session_factory, 1)
    estimates = [
        {
            "meter_id": meter_id,
            "quantity": "energy_import_kwh",
            "ts": T0 + timedelta(minutes=15 * k),
            "value": Decimal("10.25") + k,
            "created_at": (T0 + timedelta(days=1)).astimezone(PLUS_TWO),
        }
        for k in range(5)
    ]
    statement = BulkStatement(insert(ReadingEstimate), list(estimates[0]))
    _same_as_orm(
        session_factory,
        ReadingEstimate,
        estimates,
        lambda s: statement.execute(s.connection(), estimates),
    )
    records = [
        {
            "meter_id": meter_id,
            "quantity": "energy_import_kwh",
            "t_start": T0 + timedelta(minutes=15 * k),
            "t_end": T0 + timedelta(minutes=15 * (k + 1)),
            "energy_kwh": Decimal("0.125") * k,
            "quality": "estimated" if k % 2 else "measured",
            "reason": "gap" if k % 2 else "",
            "supersedes": None if k < 3 else k,
            "created_at": T0 + timedelta(days=1),
        }
        for k in range(5)
    ]
    statement = BulkStatement(insert(ConsumptionEventRecord), list(records[0]))
    _same_as_orm(
        session_factory,
        ConsumptionEventRecord,
        records,
        lambda s: statement.execute(s.connection(), records),
    )


def test_bulk_update_and_delete_change_the_rows_the_orm_would(
    session_factory: sessionmaker[Session],
) -> None:
    meter_ids = _meters(session_factory, 3)
    seen = (T0 + timedelta(seconds=7, microseconds=5)).astimezone(PLUS_TWO)
    meters = Meter.__table__
    update_meters = BulkStatement(
        update(meters)
        .where(meters.c.id == bindparam("meter_id"))
        .values(online=bindparam("online"), last_seen_at=bindparam("last_seen_at"))
    )
    with session_factory() as session, session.begin():
        session.execute(update(Meter), [{"id": meter_ids[0], "online": True, "last_seen_at": seen}])
        rows = [{"meter_id": m, "online": False, "last_seen_at": seen} for m in meter_ids[1:]]
        assert update_meters.execute(session.connection(), rows) == 2
    raw = _raw(session_factory, "meters", "id, online, last_seen_at")
    assert [r[2] for r in raw] == [raw[0][2]] * 3  # the same stored instant
    with session_factory() as session:
        assert session.scalars(select(Meter.last_seen_at)).all() == [seen] * 3
        assert session.scalars(select(Meter.online).order_by(Meter.id)).all() == [
            True,
            False,
            False,
        ]

    rows = _reading_rows(meter_ids)
    with session_factory() as session, session.begin():
        BulkStatement(insert(Reading), list(rows[0])).execute(session.connection(), rows)
    readings = Reading.__table__
    delete_between = BulkStatement(
        delete(readings).where(
            readings.c.meter_id == bindparam("m"),
            readings.c.ts > bindparam("lo"),
            readings.c.ts < bindparam("hi"),
        )
    )
    with session_factory() as session, session.begin():
        # Bounds in another zone: the two reads strictly inside go, the edges stay.
        bounds = {"lo": T0.astimezone(PLUS_TWO), "hi": T0 + timedelta(minutes=45)}
        assert delete_between.execute(session.connection(), [{"m": meter_ids[0], **bounds}]) == 2
    with session_factory() as session:
        left = session.scalar(
            select(func.count()).select_from(Reading).where(Reading.meter_id == meter_ids[0])
        )
        assert left == 2


def test_a_row_skipped_by_on_conflict_is_not_counted(
    session_factory: sessionmaker[Session],
) -> None:
    rows = _reading_rows(_meters(session_factory, 2))
    with session_factory() as session, session.begin():
        connection = session.connection()
        statement = _bulk_insert_ignoring(connection.dialect.name, _table(Reading))
        assert statement.execute(connection, rows[:3]) == 3
        assert statement.execute(connection, rows) == len(rows) - 3
        assert statement.execute(connection, rows) == 0
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Reading)) == len(rows)


def test_a_key_repeated_within_one_call_is_stored_and_counted_once(
    session_factory: sessionmaker[Session],
) -> None:
    # PostgreSQL runs the call as one INSERT ... SELECT: ON CONFLICT DO NOTHING must skip
    # the second row of a key inside the statement as executemany skips it row by row.
    rows = _reading_rows(_meters(session_factory, 1))
    repeated = [rows[0], rows[1], {**rows[0], "value": Decimal(7)}, rows[1]]
    with session_factory() as session, session.begin():
        connection = session.connection()
        statement = _bulk_insert_ignoring(connection.dialect.name, _table(Reading))
        assert statement.execute(connection, repeated) == 2
    with session_factory() as session:
        stored = session.scalars(select(Reading.value).order_by(Reading.ts)).all()
    assert stored == [rows[0]["value"], rows[1]["value"]]


def test_poll_outcomes_written_by_the_recorder_are_stored_as_the_orm_stores_them(
    session_factory: sessionmaker[Session],
) -> None:
    [meter_id] = _meters(session_factory, 1)
    rows = [
        {
            "meter_id": meter_id,
            "poll_group": "energy",
            "interval_ts": T0 + timedelta(minutes=15 * k),
            "ok": k % 2 == 0,
            "reason": None if k % 2 == 0 else "timeout",
            "exception_code": None if k < 3 else 2,
            "detail": "" if k % 2 == 0 else "unit 3: no reply in 1.0 s",
            "attempts": 1 + k,
            "requests": 2 * k,
            "channel": "tcp:127.0.0.1:5020",
            "worker": "modbus-test",
            "started_at": (T0 + timedelta(seconds=k)).astimezone(PLUS_TWO),
            "finished_at": T0 + timedelta(seconds=k, milliseconds=250),
        }
        for k in range(5)
    ]
    _same_as_orm(
        session_factory,
        ModbusPollOutcome,
        rows,
        lambda s: _INSERT_OUTCOMES.execute(s.connection(), rows),
    )
