"""Migration 0005 matches the models and goes down and up again with data in place."""

from __future__ import annotations

from datetime import UTC, datetime

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, MetaData, inspect, text

from gridvend.db import alembic_config, upgrade
from gridvend.models import metadata_targets


def test_the_migrated_schema_matches_the_models(engine: Engine) -> None:
    combined = MetaData()
    for metadata in metadata_targets():
        for table in metadata.tables.values():
            table.to_metadata(combined)
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": False, "render_as_batch": True}
        )
        assert compare_metadata(context, combined) == []


def test_0005_downgrades_and_upgrades_with_meters_in_place(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO meters (serial, comm_id, model, phases, protocol, prepaid_mode,"
                " lifecycle, created_at, location) VALUES ('M-1', 'M-1', '', 1, 'mqtt', 'token',"
                " 'installed', :now, 'Stand 1')"
            ),
            {"now": datetime(2026, 11, 24, tzinfo=UTC)},
        )
    command.downgrade(alembic_config(engine), "0003")
    assert "meter_lifecycle_changes" not in inspect(engine).get_table_names()
    upgrade(engine)
    with engine.connect() as connection:
        row = connection.execute(text("SELECT serial, location FROM meters")).one()
    assert tuple(row) == ("M-1", "")
    assert "commissioning_steps" in inspect(engine).get_table_names()
