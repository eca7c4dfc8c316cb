"""SQLite write transactions of one process queue on gridvend.db's writer lock: every
way a transaction ends gives the lock back, and concurrent writers all get in."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from gridvend.db import make_engine, make_read_only_session_factory


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Engine:
    engine = make_engine(f"sqlite:///{tmp_path}/writers.db")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE t (x INTEGER)"))
    return engine


def _count(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT count(*) FROM t")).scalar_one())


def _write_within(engine: Engine, seconds: float) -> bool:
    """Whether another thread gets a write transaction in within ``seconds``."""
    done = threading.Event()

    def write() -> None:
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO t VALUES (0)"))
        done.set()

    threading.Thread(target=write, daemon=True).start()
    return done.wait(seconds)


def test_commit_rollback_and_a_dropped_connection_give_the_lock_back(
    sqlite_engine: Engine,
) -> None:
    with sqlite_engine.begin() as connection:
        connection.execute(text("INSERT INTO t VALUES (1)"))
    assert _write_within(sqlite_engine, 5)

    with pytest.raises(RuntimeError), sqlite_engine.begin() as connection:
        connection.execute(text("INSERT INTO t VALUES (2)"))
        raise RuntimeError("the request failed")
    assert _write_within(sqlite_engine, 5)

    connection = sqlite_engine.connect()
    connection.begin()
    connection.execute(text("INSERT INTO t VALUES (3)"))
    connection.close()  # returned to the pool mid-transaction: rolled back
    assert _write_within(sqlite_engine, 5)

    with Session(sqlite_engine) as session:  # a session closed without commit
        session.execute(text("INSERT INTO t VALUES (4)"))
    assert _write_within(sqlite_engine, 5)
    assert _count(sqlite_engine) == 5  # 1 and the four probes' rows


def test_a_reader_does_not_wait_for_a_writer(sqlite_engine: Engine) -> None:
    reading = make_read_only_session_factory(sqlite_engine)
    with sqlite_engine.begin() as connection:
        connection.execute(text("INSERT INTO t VALUES (1)"))
        with reading() as session:
            assert session.execute(text("SELECT count(*) FROM t")).scalar_one() == 0


def test_concurrent_writers_all_get_in(sqlite_engine: Engine) -> None:
    def writer(n: int) -> None:
        for _ in range(50):
            with sqlite_engine.begin() as connection:
                last = connection.execute(text("SELECT count(*) FROM t")).scalar_one()
                connection.execute(text("INSERT INTO t VALUES (:x)"), {"x": last + 1})

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert _count(sqlite_engine) == 400
    with sqlite_engine.connect() as connection:
        # Read-then-write transactions never interleaved: every value is unique.
        distinct = connection.execute(text("SELECT count(DISTINCT x) FROM t")).scalar_one()
    assert distinct == 400
