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


def test_0021_counts_receipts_above_every_old_number_and_moves_the_reversal_state(
    tmp_path: Path,
) -> None:
    # Before 0021 a counter receipt was "<point>-<vend id>": the counters 0021 adds must
    # not hand out one of those numbers again. The state a reversal puts back moves from
    # its own table onto the vend's row.
    engine = make_engine(f"sqlite:///{tmp_path}/old.db")
    upgrade(engine, "0020")
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("PRAGMA foreign_keys=OFF")  # only the rows the migration reads
        cursor.execute(
            "INSERT INTO vending_points (id, code, name, currency, credit_limit_minor,"
            " outstanding_minor, active) VALUES (1, 'CTR1', 'Counter', 'ZAR', 100, 0, 1)"
        )
        for vend_id in (40, 41):
            cursor.execute(
                "INSERT INTO vends (id, receipt_number, channel, reference, account_id,"
                " meter_id, vending_point_id, operator, payment_method, currency,"
                " tendered_minor, units_kwh, breakdown, status, created_at, reprints)"
                f" VALUES ({vend_id}, 'CTR1-00000000{vend_id}', 'counter', 'r{vend_id}', 1, 1,"
                " 1, 'clerk', 'cash', 'ZAR', 100, 0, '{}', 'issued',"
                " '2026-12-01 10:00:00.000000', 0)"
            )
        cursor.execute(
            "INSERT INTO vend_account_snapshots (vend_id, account_id, state)"
            " VALUES (41, 1, '{\"debt_minor\": 7}')"
        )
    finally:
        raw.close()
    upgrade(engine)
    with engine.connect() as connection:
        count = connection.execute(text("SELECT receipts_issued FROM vending_points")).scalar()
        before = dict(
            connection.execute(text("SELECT id, account_before FROM vends ORDER BY id")).all()
        )
    assert count == 41
    assert before == {40: None, 41: '{"debt_minor": 7}'}
    engine.dispose()
