"""The migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

from gridvend.db import alembic_config, make_engine, upgrade
from gridvend.models import metadata_targets


def test_migrations_form_one_line_of_history(engine: Engine) -> None:
    script = ScriptDirectory.from_config(alembic_config(engine))
    assert len(script.get_heads()) == 1


def test_the_migrated_schema_matches_the_models(engine: Engine) -> None:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection)
        differences = compare_metadata(context, metadata_targets())
    assert differences == []


def test_point_receipt_counters_start_above_every_receipt_made_from_a_vend_id(
    tmp_path: Path,
) -> None:
    # Before 0021 a counter receipt was "<point>-<vend id>"; the counters 0021 adds must
    # not hand out one of those numbers again.
    engine = make_engine(f"sqlite:///{tmp_path}/old.db")
    upgrade(engine, "0020")
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("PRAGMA foreign_keys=OFF")  # only the two rows the count depends on
        cursor.execute(
            "INSERT INTO vending_points (id, code, name, currency, credit_limit_minor,"
            " outstanding_minor, active) VALUES (1, 'CTR1', 'Counter', 'ZAR', 100, 0, 1)"
        )
        cursor.execute(
            "INSERT INTO vends (id, receipt_number, channel, reference, account_id, meter_id,"
            " vending_point_id, operator, payment_method, currency, tendered_minor, units_kwh,"
            " breakdown, status, created_at, reprints) VALUES (41, 'CTR1-0000000041',"
            " 'counter', 'r', 1, 1, 1, 'clerk', 'cash', 'ZAR', 100, 0, '{}', 'issued',"
            " '2026-12-01 10:00:00.000000', 0)"
        )
    finally:
        raw.close()
    upgrade(engine)
    with engine.connect() as connection:
        count = connection.execute(text("SELECT receipts_issued FROM vending_points")).scalar()
    assert count == 41
    engine.dispose()
