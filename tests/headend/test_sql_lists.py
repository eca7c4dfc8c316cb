"""``among``: a column matched against a list given at run time, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import BigInteger, Column, Engine, MetaData, String, Table, insert, select

from headend.sql_lists import among

# Strings an array literal or a JSON text could get wrong: quotes, backslashes, separators,
# braces, NULL's spelling, spaces, non-ASCII, the empty string.
AWKWARD = ['"', "\\", ",", "{a}", "NULL", " padded ", "Zürich-7", "", "a'b", "[1]"]

_metadata = MetaData()
_probe = Table(
    "among_probe",
    _metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("name", String(40)),
)
_BY_ID = select(_probe.c.id).where(among(_probe.c.id, "ids")).order_by(_probe.c.id)
_BY_NAME = select(_probe.c.name).where(among(_probe.c.name, "names")).order_by(_probe.c.id)


@pytest.fixture
def probe(engine: Engine) -> Engine:
    _metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(
            insert(_probe),
            [{"id": 2**40 + n, "name": name} for n, name in enumerate(AWKWARD)],
        )
    return engine


def test_among_finds_exactly_the_listed_ids_whatever_the_list_length(probe: Engine) -> None:
    ids = [2**40 + n for n in range(len(AWKWARD))]
    with probe.connect() as connection:
        assert connection.scalars(_BY_ID, {"ids": ids}).all() == ids
        assert connection.scalars(_BY_ID, {"ids": [ids[3]]}).all() == [ids[3]]
        assert connection.scalars(_BY_ID, {"ids": [ids[1], 7, ids[0]]}).all() == ids[:2]
        assert connection.scalars(_BY_ID, {"ids": []}).all() == []


def test_among_matches_strings_byte_for_byte(probe: Engine) -> None:
    with probe.connect() as connection:
        assert connection.scalars(_BY_NAME, {"names": AWKWARD}).all() == AWKWARD
        for name in AWKWARD:
            assert connection.scalars(_BY_NAME, {"names": [name]}).all() == [name]
        assert connection.scalars(_BY_NAME, {"names": ["zurich-7", "null", "'"]}).all() == []


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.sampled_from(AWKWARD) | st.text(max_size=6)))
def test_among_agrees_with_python_membership(probe: Engine, names: list[str]) -> None:
    names = [n.replace("\x00", "") for n in names]  # PostgreSQL text cannot hold NUL
    with probe.connect() as connection:
        found = connection.scalars(_BY_NAME, {"names": names}).all()
    assert found == [name for name in AWKWARD if name in names]


def test_among_is_served_by_the_index_on_sqlite(probe: Engine) -> None:
    if probe.dialect.name != "sqlite":
        pytest.skip("query plans are compared on SQLite only")
    with probe.connect() as connection:
        sql = str(_BY_ID.compile(connection))
        plan = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", ("[1, 2]",)).all()
    steps = " | ".join(str(row[-1]) for row in plan)
    assert "SEARCH among_probe USING" in steps and "(id=?)" in steps, steps
