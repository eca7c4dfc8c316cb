"""Migration 0016 keeps the outbox rows written before it: delivered ones stay
delivered, the others wait for the recording channel; it goes down and up again."""

from __future__ import annotations

from datetime import UTC, datetime

from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

from gridvend.db import alembic_config, upgrade

AT = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


def test_outbox_rows_from_before_0016_keep_their_state(engine: Engine) -> None:
    config = alembic_config(engine)
    before = ScriptDirectory.from_config(config).get_revision("0016").down_revision
    assert isinstance(before, str)
    command.downgrade(config, before)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO tariffs (code, name, currency, timezone, created_at)"
                " VALUES ('T', 'T', 'ZAR', 'UTC', :at)"
            ),
            {"at": AT},
        )
        connection.execute(
            text(
                "INSERT INTO customers (id, name, address, phone, email, category, created_at)"
                " VALUES (1, 'C', '', '', '', 'residential', :at)"
            ),
            {"at": AT},
        )
        connection.execute(
            text(
                "INSERT INTO accounts (id, account_number, customer_id, currency, tariff_code,"
                " free_units_eligible, debt_minor, carry_over_minor, month_to_date_kwh,"
                " debt_recovery, status, created_at)"
                " VALUES (1, 'A-1', 1, 'ZAR', 'T', true, 0, 0, 0, '{}', 'active', :at)"
            ),
            {"at": AT},
        )
        connection.execute(
            text(
                "INSERT INTO notifications (account_id, kind, message, created_at, delivered_at,"
                " attempts) VALUES (1, 'low_balance_30', 'sent', :at, :at, 1),"
                " (1, 'disconnect', 'waiting', :at, NULL, 0)"
            ),
            {"at": AT},
        )
    upgrade(engine)
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT message, channel, status, attempts FROM notifications ORDER BY id")
        ).all()
        state = connection.execute(
            text("SELECT count(*) FROM central_account_states WHERE debt_weeks_booked <> 0")
        ).scalar()
    assert [tuple(r) for r in rows] == [
        ("sent", "record", "delivered", 1),
        ("waiting", "record", "pending", 0),
    ]
    assert state == 0
