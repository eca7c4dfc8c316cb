"""Hot statements run straight on the database driver, bound as SQLAlchemy binds them.

A counter vend runs a dozen small statements (and every API request checks its token).
Through ``Connection.execute`` each one costs SQLAlchemy's per-execution work (cache key
and cache look-up, an execution context, the parameters built and processed, a result
object) several times over what the driver and the database spend on it: measured, the
statements' Python overhead was half of the vend transaction's CPU. A ``DriverStatement``
is still written and compiled by SQLAlchemy (once per dialect), converts its parameters
and results with its columns' own bind and result processors, and runs on the DBAPI
connection of the caller's session, inside the caller's transaction (on a plain
``Connection`` outside a transaction: as the driver runs a statement alone, e.g. SQLite's
autocommit). Driver errors come out as SQLAlchemy's exception classes (``IntegrityError``,
``OperationalError``, ...), as from ``Connection.execute``.

Not for statements whose columns have Python-side defaults (refused when compiled) or
with expanding (``IN``) parameters; SQLAlchemy's statement events do not see these
executions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

from headend.driver_binding import bind_plan

Processor = Callable[[Any], Any]
# Where a statement runs: a session (in its transaction) or a connection.
Runner = Session | Connection


@dataclass(slots=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]
    processors: tuple[Processor | None, ...]
    # The values of the parameters the statement sets itself (a LIMIT, the 1 of "n + 1").
    preset: dict[str, Any]
    positional: bool
    result_types: tuple[Any, ...]
    # Whether it gives rows (a SELECT, a RETURNING clause): known here because psycopg
    # builds its cursor's description anew on every access.
    returns_rows: bool
    # Per result column, set from the driver's description at the first execution.
    result_processors: tuple[Processor | None, ...] | None = field(default=None)


class DriverStatement:
    """A SELECT, INSERT, UPDATE or DELETE run on the driver's cursor (see the module
    docstring). ``columns``: an INSERT's value keys (every execution gives all of them)."""

    def __init__(self, statement: ClauseElement, columns: Sequence[str] = ()) -> None:
        self._statement = statement
        self._columns = list(columns)
        self._by_dialect: dict[str, _Compiled] = {}

    def rows(self, on: Runner, parameters: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Run it and return the rows it gives (a SELECT's, or a RETURNING clause's)."""
        return self._run(on, parameters, fetch=True)[0]

    def first(self, on: Runner, parameters: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """The first row, or None."""
        rows = self.rows(on, parameters)
        return rows[0] if rows else None

    def scalar(self, on: Runner, parameters: Mapping[str, Any]) -> Any:
        """The first column of the first row, or None."""
        rows = self.rows(on, parameters)
        return rows[0][0] if rows else None

    def execute(self, on: Runner, parameters: Mapping[str, Any]) -> int:
        """Run it; the number of rows the database reports changed."""
        return self._run(on, parameters, fetch=False)[1]

    def _run(
        self, on: Runner, parameters: Mapping[str, Any], *, fetch: bool
    ) -> tuple[list[tuple[Any, ...]], int]:
        # A session's connection begins the session's transaction if need be.
        connection = on.connection() if isinstance(on, Session) else on
        dialect = connection.dialect
        compiled = self._by_dialect.get(dialect.name)
        if compiled is None:
            compiled = self._by_dialect[dialect.name] = _compile(
                self._statement, self._columns, dialect
            )
        # A parameter the statement does not set itself must be given (KeyError).
        values = [
            parameters[name] if name in parameters else compiled.preset[name]
            for name in compiled.names
        ]
        for i, process in enumerate(compiled.processors):
            if process is not None:
                values[i] = process(values[i])
        driver_parameters: Any = (
            tuple(values) if compiled.positional else dict(zip(compiled.names, values, strict=True))
        )
        cursor = _cursor(connection)
        try:
            cursor.execute(compiled.sql, driver_parameters)
            # Drained even when not wanted: the cursor is kept for the next statement.
            fetched = list(cursor.fetchall()) if compiled.returns_rows else []
            count: int = cursor.rowcount
            rows = _processed(compiled, cursor, dialect, fetched) if fetch and fetched else []
        except dialect.loaded_dbapi.Error as exc:
            raise DBAPIError.instance(
                compiled.sql, driver_parameters, exc, dialect.loaded_dbapi.Error, dialect=dialect
            ) from exc
        return rows, count


def _cursor(connection: Connection) -> Any:
    """The driver cursor kept with the pooled DBAPI connection (its ``info``, which the
    pool clears when it replaces the connection): a new psycopg cursor per statement cost
    a tenth of a vend's driver time."""
    pooled = connection.connection
    cursor = pooled.info.get(_CURSOR)
    if cursor is None:
        cursor = pooled.info[_CURSOR] = pooled.dbapi_connection.cursor()  # type: ignore[union-attr]
    return cursor


_CURSOR = "gridvend.driver_statements.cursor"


def _compile(statement: ClauseElement, columns: list[str], dialect: Dialect) -> _Compiled:
    compiled = statement.compile(dialect=dialect, column_keys=columns or None)
    assert isinstance(compiled, SQLCompiler)
    if compiled.insert_prefetch or compiled.update_prefetch:
        raise ValueError("a DriverStatement cannot fill in Python-side column defaults")
    names, processors = bind_plan(compiled, dialect)
    binds = [compiled.binds[name] for name in names]
    preset = {
        name: b.effective_value for name, b in zip(names, binds, strict=True) if not b.required
    }
    # A SELECT's columns, or an INSERT/UPDATE's RETURNING columns.
    result_columns: Sequence[Any] = (
        getattr(statement, "selected_columns", None)
        or getattr(statement, "exported_columns", None)
        or ()
    )
    return _Compiled(
        compiled.string,
        names,
        processors,
        preset,
        compiled.positional,
        tuple(column.type for column in result_columns),
        bool(result_columns),
    )


def _processed(
    compiled: _Compiled, cursor: Any, dialect: Dialect, rows: list[Any]
) -> list[tuple[Any, ...]]:
    if compiled.result_processors is None:
        compiled.result_processors = tuple(
            type_.dialect_impl(dialect).result_processor(dialect, entry[1])
            for type_, entry in zip(compiled.result_types, cursor.description, strict=True)
        )
    processors = compiled.result_processors
    assert processors is not None
    if not any(processors):
        return [tuple(row) for row in rows]
    return [
        tuple(
            value if process is None or value is None else process(value)
            for process, value in zip(processors, row, strict=True)
        )
        for row in rows
    ]
