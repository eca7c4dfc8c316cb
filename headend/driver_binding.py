"""How a compiled statement's parameters go to the driver: their order and converters.

Shared by the statements that skip SQLAlchemy's per-execution work and run on the DBAPI
cursor (``headend.bulk_write``, ``headend.bulk_read``, ``vending.driver_statements``), and
``headend.sql_lists``' list parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import Dialect
from sqlalchemy.sql.compiler import SQLCompiler

Processor = Callable[[Any], Any]


def bind_plan(
    compiled: SQLCompiler, dialect: Dialect
) -> tuple[tuple[str, ...], tuple[Processor | None, ...]]:
    """The parameter names in the driver's order (positional styles repeat a name per
    use) and each one's bind processor on ``dialect`` (None: passed as it is)."""
    if compiled.positional and compiled.positiontup:
        names = tuple(compiled.positiontup)
    else:
        names = tuple(compiled.binds)
    binds = compiled.binds
    processors = tuple(binds[n].type.dialect_impl(dialect).bind_processor(dialect) for n in names)
    return names, processors


def binary_placeholders(sql: str, names: Iterable[str]) -> str:
    """``sql`` (psycopg's named style) with the binary placeholder ``%(name)b`` for each of
    ``names``: psycopg builds a list parameter in Python in the text format, in C in the
    binary one (see docs/performance.md, Ingestion, 4 Dec)."""
    for name in names:
        sql = sql.replace(f"%({name})s", f"%({name})b")
    return sql
