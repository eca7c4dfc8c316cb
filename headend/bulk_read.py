"""One small SELECT run for many parameter rows, straight on the driver.

The ingestion path asks some questions once per register of a batch (the start of a run of
unchanged values). Through ``Connection.execute`` each cost about 145 µs of Python on
PostgreSQL and a round trip; the same statement compiled once and sent by the driver costs a
third of that, and psycopg sends all of a batch's in one pipeline (one round trip). Each row
keeps its own statement execution, so the database plans each with its real values (one
statement joining all rows made PostgreSQL misjudge the value filter and sort whole
registers).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Dialect, Select

from headend.driver_binding import bind_plan

__all__ = ["BulkLookup"]


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]
    # Values of the statement's own bound literals (a LIMIT, a fixed quality).
    defaults: Mapping[str, Any]
    processors: tuple[Callable[[Any], Any] | None, ...]
    positional: bool
    result: Callable[[Any], Any] | None


class BulkLookup:
    """A SELECT of one column, run once per parameter row; its first row's value, each."""

    def __init__(self, statement: Select[Any]) -> None:
        self._statement = statement
        self._by_dialect: dict[str, _Compiled] = {}

    def execute(self, connection: Connection, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
        """The first column of the first row the statement returns for each parameter row
        (None where it returns no row), in the order of ``rows``, converted by the column's
        type. Runs in the connection's transaction. Raises ``KeyError`` for a row without one
        of the statement's parameters."""
        if not rows:
            return []
        compiled = self._compiled(connection.dialect)
        parameters: list[Any] = []
        for row in rows:
            values = [
                process(value) if process is not None else value
                for value, process in zip(
                    (row[n] if n in row else compiled.defaults[n] for n in compiled.names),
                    compiled.processors,
                    strict=True,
                )
            ]
            parameters.append(
                values if compiled.positional else dict(zip(compiled.names, values, strict=True))
            )
        cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            firsts = _first_values(connection.dialect, cursor, compiled.sql, parameters)
        finally:
            cursor.close()
        if compiled.result is None:
            return firsts
        return [None if value is None else compiled.result(value) for value in firsts]

    def _compiled(self, dialect: Dialect) -> _Compiled:
        compiled = self._by_dialect.get(dialect.name)
        if compiled is None:
            compiled = self._by_dialect[dialect.name] = self._compile(dialect)
        return compiled

    def _compile(self, dialect: Dialect) -> _Compiled:
        sql = self._statement.compile(dialect=dialect)
        names, processors = bind_plan(sql, dialect)
        defaults = {name: bind.value for name, bind in sql.binds.items() if not bind.required}
        column_type = self._statement.selected_columns[0].type.dialect_impl(dialect)
        return _Compiled(
            sql.string,
            names,
            defaults,
            processors,
            sql.positional,
            column_type.result_processor(dialect, None),
        )


def _first_values(dialect: Dialect, cursor: Any, sql: str, parameters: list[Any]) -> list[Any]:
    out: list[Any] = []
    if dialect.driver == "psycopg":
        # One pipeline: every statement is sent before the first result is read.
        cursor.executemany(sql, parameters, returning=True)
        while True:
            row = cursor.fetchone()
            out.append(None if row is None else row[0])
            if not cursor.nextset():
                break
        return out
    for row_parameters in parameters:
        cursor.execute(sql, row_parameters)
        row = cursor.fetchone()
        out.append(None if row is None else row[0])
    return out
