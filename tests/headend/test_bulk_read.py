"""``BulkLookup`` (a select run per parameter row, straight on the driver) answers exactly
what ``Connection.execute`` answers for each row, typed the same, in the rows' order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session, sessionmaker

from headend.bulk_read import BulkLookup
from headend.models import Reading
from headend.registry import MeterRegistration, register_meter

T0 = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
_EARLIEST = (
    select(Reading.ts)
    .where(
        Reading.meter_id == bindparam("meter_id"),
        Reading.quantity == bindparam("quantity"),
        Reading.value == bindparam("value"),
        Reading.quality == "measured",
    )
    .order_by(Reading.ts)
    .limit(1)
)


def _store_reads(session_factory: sessionmaker[Session]) -> list[int]:
    with session_factory() as session, session.begin():
        meter_ids = [
            register_meter(session, MeterRegistration(serial=f"BR-{i}")).id for i in range(3)
        ]
        for n, meter_id in enumerate(meter_ids):
            for k in range(6):
                session.add(
                    Reading(
                        meter_id=meter_id,
                        quantity="energy_export_kwh",
                        ts=T0 + timedelta(minutes=15 * k),
                        # Meter n holds its value from its n-th read on; read 4 is flagged.
                        value=Decimal("1.25") * min(k, n),
                        source="modbus",
                        received_at=T0,
                        quality="flagged" if k == 4 else "measured",
                    )
                )
    return meter_ids


def test_each_row_gets_the_answer_execute_gives_it_in_order_and_typed(
    session_factory: sessionmaker[Session],
) -> None:
    meter_ids = _store_reads(session_factory)
    rows = [
        {"meter_id": meter_id, "quantity": "energy_export_kwh", "value": Decimal("1.25") * n}
        for n, meter_id in enumerate(meter_ids)
    ]
    # No such value, and no such register: no row, so None.
    rows.append({"meter_id": meter_ids[0], "quantity": "energy_export_kwh", "value": Decimal(9)})
    rows.append({"meter_id": meter_ids[1], "quantity": "energy_import_kwh", "value": Decimal(0)})
    with session_factory() as session:
        connection = session.connection()
        expected = [connection.execute(_EARLIEST, row).scalar() for row in rows]
        found = BulkLookup(_EARLIEST).execute(connection, rows)
    assert found == expected
    assert found[:3] == [T0, T0 + timedelta(minutes=15), T0 + timedelta(minutes=30)]
    assert found[3:] == [None, None]
    assert all(ts is None or ts.tzinfo is UTC for ts in found)


def test_look_ups_see_the_callers_uncommitted_writes(
    session_factory: sessionmaker[Session],
) -> None:
    meter_ids = _store_reads(session_factory)
    lookup = BulkLookup(_EARLIEST)
    rows = [
        {"meter_id": m, "quantity": "energy_export_kwh", "value": Decimal(0)} for m in meter_ids
    ]
    with session_factory() as session, session.begin():
        # A read stored earlier in this transaction, not yet committed, is seen.
        session.add(
            Reading(
                meter_id=meter_ids[2],
                quantity="energy_export_kwh",
                ts=T0 - timedelta(minutes=15),
                value=Decimal(0),
                source="modbus",
                received_at=T0,
            )
        )
        session.flush()
        found = lookup.execute(session.connection(), rows)
    assert found == [T0, T0, T0 - timedelta(minutes=15)]
    assert lookup.execute(session_factory().connection(), []) == []
