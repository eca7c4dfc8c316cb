"""``column IN (a list given when the statement runs)``, written for each database.

SQLAlchemy writes an expanding ``IN`` anew for every execution (one placeholder per value),
so on PostgreSQL the statement's text changes with the list's length: SQLAlchemy expands
it on every run and psycopg parses every new text again (about 7 % of an ingestion batch).
On PostgreSQL ``among`` is ``column = ANY(%(name)b::TYPE[])``: one parameter (in psycopg's
binary format), one text for every length. On SQLite it is ``column IN (SELECT value FROM
json_each(?))`` with the list as one JSON text: the same index search as the expanded ``IN``
(``EXPLAIN QUERY PLAN``), and one text that the sqlite3 module's statement cache keeps.
Elsewhere it is the expanding ``IN``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Boolean, ColumnElement, Dialect, String, TypeDecorator, any_, bindparam
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.visitors import InternalTraversal

from headend.driver_binding import binary_placeholders

__all__ = ["among"]


class _Among(ColumnElement[bool]):
    """``column`` is one of the values of the parameter ``name`` (a list)."""

    inherit_cache = True
    type = Boolean()
    # A condition in itself: without this, SQLite (no native booleans) gets "... = 1", which
    # no index serves.
    _is_implicitly_boolean = True
    _traverse_internals = [  # noqa: RUF012 (SQLAlchemy reads it as a list)
        ("column", InternalTraversal.dp_clauseelement),
        ("name", InternalTraversal.dp_string),
    ]

    def __init__(self, column: ColumnElement[Any], name: str) -> None:
        self.column = column
        self.name = name


def among(column: Any, name: str) -> ColumnElement[bool]:
    """``column`` is one of the list given as the parameter ``name`` when the statement runs."""
    return _Among(column, name)


@compiles(_Among)
def _expanding_in(element: _Among, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.column.in_(bindparam(element.name, expanding=True)), **kw)


@compiles(_Among, "postgresql")
def _equals_any(element: _Among, compiler: SQLCompiler, **kw: Any) -> str:
    values = bindparam(element.name, type_=ARRAY(element.column.type))
    sql = compiler.process(element.column == any_(values), **kw)
    if compiler.dialect.driver != "psycopg":
        return sql
    return binary_placeholders(sql, [element.name])


@compiles(_Among, "sqlite")
def _in_json_each(element: _Among, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.column, **kw)
    values = compiler.process(bindparam(element.name, type_=_JsonList()), **kw)
    return f"{column} IN (SELECT value FROM json_each({values}))"


class _JsonList(TypeDecorator[Iterable[Any]]):
    """A list of numbers or strings, bound as one JSON array text."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: Iterable[Any] | None, dialect: Dialect) -> str | None:
        return None if value is None else json.dumps(list(value))
