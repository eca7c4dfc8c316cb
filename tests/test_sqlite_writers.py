"""SQLite write transactions queue on gridvend.db's writer lock, across threads and
processes: every way a transaction ends gives the lock back, concurrent writers all get
in, a writer in another process starts when the holder commits, and a turn held too long
lets the writer go on to SQLite's own lock."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.orm import Session

from gridvend import db
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


# Run in another process: hold a write transaction (or, with "turn", only the processes'
# turn at the lock file) for argv[3] seconds after saying so.
_HOLDER = """
import fcntl, os, sys, time
from sqlalchemy import text
from gridvend.db import make_engine
path, what, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
if what == "turn":
    fd = os.open(path + "-writers", os.O_RDONLY | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("holding", flush=True)
    time.sleep(seconds)
else:
    engine = make_engine("sqlite:///" + path)
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO t VALUES (1)"))
        print("holding", flush=True)
        time.sleep(seconds)
"""


def _hold_in_another_process(path: Path, what: str, seconds: float) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(path), what, str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "holding"
    return holder


def _impatient(engine: Engine) -> Engine:
    """``engine`` with SQLite's own busy wait off: a writer that meets SQLite's lock held
    fails at once ("database is locked") instead of retrying."""

    def no_busy_wait(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA busy_timeout = 0")

    event.listen(engine, "connect", no_busy_wait)
    engine.dispose()  # connections from now on
    return engine


def test_a_writer_in_another_process_starts_when_the_holder_commits(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    engine = _impatient(sqlite_engine)
    holder = _hold_in_another_process(tmp_path / "writers.db", "transaction", 0.5)
    try:
        # Only the queue can get this write in: SQLite's lock is held for half a second
        # and this connection does not wait for it.
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO t VALUES (2)"))
    finally:
        assert holder.wait(timeout=30) == 0
    with engine.connect() as connection:
        assert connection.execute(text("SELECT x FROM t ORDER BY rowid")).scalars().all() == [1, 2]


def test_a_turn_held_past_the_busy_timeout_lets_the_writer_go_on(
    sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "BUSY_TIMEOUT_S", 0.3)
    holder = _hold_in_another_process(tmp_path / "writers.db", "turn", 120)
    try:
        # Each goes on after 0.3 s, to SQLite's lock (free), not after the holder's 120 s.
        assert _write_within(sqlite_engine, 10)
        assert _write_within(sqlite_engine, 10)
        assert _count(sqlite_engine) == 2
    finally:
        holder.kill()
        holder.wait()


def test_a_forked_child_takes_turns_with_its_parent(sqlite_engine: Engine, tmp_path: Path) -> None:
    with sqlite_engine.begin() as connection:  # the parent has taken a turn before
        connection.execute(text("INSERT INTO t VALUES (1)"))
    go_read, go_write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (runs in the child)
        status = 1
        try:
            engine = _impatient(make_engine(f"sqlite:///{tmp_path / 'writers.db'}"))
            os.read(go_read, 1)  # the parent now holds a write transaction
            with engine.begin() as connection:
                connection.execute(text("INSERT INTO t VALUES (2)"))
            status = 0
        finally:
            os._exit(status)
    with sqlite_engine.begin() as connection:
        connection.execute(text("INSERT INTO t VALUES (3)"))
        os.write(go_write, b"x")
        time.sleep(0.5)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0  # its write waited for the parent's
    with sqlite_engine.connect() as connection:
        assert connection.execute(text("SELECT x FROM t ORDER BY rowid")).scalars().all() == [
            1,
            3,
            2,
        ]
