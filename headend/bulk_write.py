"""Many rows in one statement sent straight to the driver, bound exactly as SQLAlchemy would.

SQLAlchemy runs every column's bind processor on every row of an executemany (for
``UtcDateTime`` on SQLite: a zone conversion and a format string per value), and an
ingestion batch repeats a handful of instants thousands of times. ``BulkStatement``
compiles its statement once per dialect, converts each distinct value of a column once
per call with that column's own bind processor, and hands the rows to the driver on the
caller's connection, inside the caller's transaction.

On SQLite the rows go as one DBAPI executemany (the sqlite3 module loops in C). On
PostgreSQL through psycopg (gridvend's driver) they go as one execution of the statement
rewritten over ``unnest()`` of one array per column, sent in psycopg's binary format:
psycopg's executemany costs Python work and a server-side statement per row (a 2,000-row
readings insert: 27-43 µs of client CPU and 34-47 µs of PostgreSQL's a row, against 5-7
and 14-18 µs as arrays; see docs/performance.md). Other drivers get the executemany.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BindParameter, Connection, Dialect, Insert, bindparam, func, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.sql.visitors import replacement_traverse

from headend.driver_binding import binary_placeholders, bind_plan


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]
    # Per name: the bind processor of its type on this dialect (None: passed as it is).
    processors: tuple[Callable[[Any], Any] | None, ...]
    positional: bool
    # One execution with a list of values per name (PostgreSQL's array form).
    as_arrays: bool


class BulkStatement:
    """An INSERT, UPDATE or DELETE run for every row of a batch in one call to the driver.

    ``columns`` are the keys of an INSERT's rows (every row gives every one: no Python-side
    defaults are filled in). Values are converted once per distinct value, so equal values
    must store equally, which holds for gridvend's column types (``headend.sqltypes``),
    strings, numbers and booleans; unhashable values (JSON) are not supported. On
    PostgreSQL the rows are one statement, so an UPDATE's (or an upsert's) rows must not
    hit the same row twice: PostgreSQL would apply one of them (or refuse the upsert).
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
        if compiled.as_arrays:
            arrays = dict(zip(compiled.names, columns, strict=True))
            return connection.exec_driver_sql(compiled.sql, arrays).rowcount
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
        if dialect.driver != "psycopg":
            return _Compiled(sql.string, names, processors, sql.positional, as_arrays=False)
        types = {name: sql.binds[name].type for name in names}
        sql_over_arrays = _over_arrays(self._statement, types, dialect)
        return _Compiled(sql_over_arrays, names, processors, positional=False, as_arrays=True)


def _over_arrays(statement: UpdateBase, types: Mapping[str, Any], dialect: Dialect) -> str:
    """``statement`` with each parameter read from a column of ``unnest(arrays)``, one array
    a parameter, as PostgreSQL SQL with psycopg's binary placeholders (``%(name)b``)."""
    # SQLAlchemy's psycopg dialect writes each array parameter with its type (``::BIGINT[]``).
    arrays = [bindparam(name, type_=ARRAY(t)) for name, t in types.items()]
    batch = func.unnest(*arrays).table_valued(*types).render_derived(name="batch")

    def column_for(element: Any) -> Any:
        if isinstance(element, BindParameter) and element.key in types:
            return batch.c[element.key]
        return None

    rewritten: ClauseElement
    if isinstance(statement, Insert):
        rewritten = statement.from_select(list(types), select(*(batch.c[n] for n in types)))
    else:
        rewritten = replacement_traverse(statement, {}, column_for)  # type: ignore[call-overload]
    return binary_placeholders(rewritten.compile(dialect=dialect).string, types)
