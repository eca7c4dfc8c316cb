"""The migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from gridvend.db import alembic_config
from gridvend.models import metadata_targets


def test_migrations_form_one_line_of_history(engine: Engine) -> None:
    script = ScriptDirectory.from_config(alembic_config(engine))
    assert len(script.get_heads()) == 1


def test_the_migrated_schema_matches_the_models(engine: Engine) -> None:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection)
        differences = compare_metadata(context, metadata_targets())
    assert differences == []
