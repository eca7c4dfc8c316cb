"""Many rows in one DBAPI executemany, bound exactly as SQLAlchemy would bind them.

SQLAlchemy runs every column's bind processor on every row of an executemany (for
``UtcDateTime`` on SQLite: a zone conversion and a format string per value), and an
ingestion batch repeats a handful of instants thousands of times. ``BulkStatement``
compiles its statement once per dialect, converts each distinct value of a column once
per call with that column's own bind processor, and hands the rows to the driver on the
caller's connection, inside the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Dialect
from sqlalchemy.sql.dml import UpdateBase

from headend.driver_binding import bind_plan


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]
    # Per name: the bind processor of its type on this dialect (None: passed as it is).
    processors: tuple[Callable[[Any], Any] | None, ...]
    positional: bool


class BulkStatement:
    """An INSERT, UPDATE or DELETE run once per row of a batch, as one DBAPI executemany.

    ``columns`` are the keys of an INSERT's rows (every row gives every one: no Python-side
    defaults are filled in). Values are converted once per distinct value, so equal values
    must store equally, which holds for gridvend's column types (``headend.sqltypes``),
    strings, numbers and booleans; unhashable values (JSON) are not supported.
    """

    def __init__(self, statement: UpdateBase, columns: Sequence[str] = ()) -> None:
        self._statement = statement
        self._columns = list(columns)
        self._by_dialect: dict[str, _Compiled] = {}

    def execute(self, connection: Connection, rows: Sequence[Mapping[str, Any]]) -> int:
        """Run the statement for every row; returns the number of rows the database
        reports changed (an insert skipped by ON CONFLICT DO NOTHING is not counted).
        Raises ``KeyError`` for a row without one of the statement's parameters."""
        if not rows:
            return 0
        compiled = self._compiled(connection.dialect)
        columns = []
        for name, process in zip(compiled.names, compiled.processors, strict=True):
            values = [row[name] for row in rows]
            if process is not None:
                converted = {value: process(value) for value in set(values)}
                values = [converted[value] for value in values]
            columns.append(values)
        parameters: list[Any] = list(zip(*columns, strict=True))
        if not compiled.positional:
            parameters = [dict(zip(compiled.names, row, strict=True)) for row in parameters]
        return connection.exec_driver_sql(compiled.sql, parameters).rowcount

    def _compiled(self, dialect: Dialect) -> _Compiled:
        compiled = self._by_dialect.get(dialect.name)
        if compiled is None:
            compiled = self._by_dialect[dialect.name] = self._compile(dialect)
        return compiled

    def _compile(self, dialect: Dialect) -> _Compiled:
        sql = self._statement.compile(
            dialect=dialect, column_keys=self._columns or None, for_executemany=True
        )
        names, processors = bind_plan(sql, dialect)
        return _Compiled(sql.string, names, processors, sql.positional)
