"""Alembic environment: one schema history for every package's tables."""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import Engine
from sqlalchemy.types import TypeDecorator

from gridvend.models import metadata_targets

config = context.config
engine: Engine | None = config.attributes.get("engine")
if engine is None:
    raise RuntimeError("run migrations through gridvend.db.upgrade (gridvend db upgrade)")


def render_item(type_: str, obj: Any, autogen_context: Any) -> Any:
    """Render our TypeDecorators as the plain column type they store, so migrations stay
    free of application imports."""
    if type_ == "type" and isinstance(obj, TypeDecorator):
        impl = obj.impl_instance
        return f"sa.{impl!r}"
    return False


with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata_targets(),
        render_as_batch=connection.dialect.name == "sqlite",
        render_item=render_item,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
