"""Database engine, sessions and migrations (SQLite embedded, PostgreSQL in production)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def make_engine(url: str, *, ping_after_idle_s: float | None = None, **kwargs: Any) -> Engine:
    """Create an engine; SQLite gets WAL, foreign keys and a busy timeout for concurrent use.
    A server database's pooled connections are checked for life before use when they have
    been idle for ``ping_after_idle_s`` (default :data:`PING_AFTER_IDLE_S`)."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        if path and path != ":memory:":
            _queue_writers(engine, _writer_queue(str(Path(path).resolve())))
        else:
            event.listen(engine, "begin", _sqlite_begin_immediate)
        return engine
    engine = create_engine(url, **kwargs)
    _ping_idle_connections(
        engine, PING_AFTER_IDLE_S if ping_after_idle_s is None else ping_after_idle_s
    )
    return engine


# A connection handed back less than this long ago is taken as alive, as connection pools
# such as HikariCP do: SQLAlchemy's pool_pre_ping costs a round trip (client and server
# CPU) on every check-out, about a tenth of a short transaction's statements. A server
# restart in between is still caught: the statement fails, SQLAlchemy sees the
# disconnect and the pool replaces its connections.
PING_AFTER_IDLE_S = 1.0
_LAST_USED = "gridvend_last_used"


def _ping_idle_connections(engine: Engine, idle_s: float) -> None:
    dialect = engine.dialect

    def used(_dbapi_connection: Any, record: Any, *_: Any) -> None:
        record.info[_LAST_USED] = time.monotonic()

    def checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        last_used = record.info.get(_LAST_USED)
        if last_used is not None and time.monotonic() - last_used < idle_s:
            return
        try:
            alive = dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as exc:
            alive = False
            if not dialect.is_disconnect(exc, dbapi_connection, None):
                raise
        if not alive:
            # The pool throws this connection away and checks out another (up to 3 tries).
            raise DisconnectionError("the pooled connection no longer answers")
        record.info[_LAST_USED] = time.monotonic()

    event.listen(engine.pool, "connect", used)
    event.listen(engine.pool, "checkin", used)
    event.listen(engine.pool, "checkout", checkout)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # SQLAlchemy emits BEGIN itself (below) instead of the sqlite3 module's lazy BEGIN.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


READ_ONLY_OPTION = "gridvend_read_only"


def _sqlite_begin_immediate(connection: Any) -> None:
    # Take the write lock when a transaction starts, so read-then-write transactions (a
    # vend reading the last TID, an audit append reading the last hash) queue behind each
    # other instead of failing with "database is locked" halfway through. Read-only
    # sessions (make_read_only_session_factory) begin deferred and never wait.
    if connection.get_execution_options().get(READ_ONLY_OPTION):
        connection.exec_driver_sql("BEGIN")
    else:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


BUSY_TIMEOUT_S = 30.0


class _WriterQueue:
    """The write transactions of this process on one SQLite file, one at a time.

    SQLite lets one writer in; the others wait in its busy handler, which sleeps 1, 2,
    5, ... up to 100 ms between tries, so a waiting vend sleeps on past the moment the
    lock frees (a p95 of hundreds of ms at 8 concurrent vends) and every waiter retries
    on its own. Here they queue on a lock taken before BEGIN IMMEDIATE and given back
    right after the COMMIT or ROLLBACK, so the next one starts at once. Writers in other
    processes still meet at SQLite's lock. A writer that cannot have the lock within the
    busy timeout goes on to BEGIN IMMEDIATE unqueued (SQLite then answers "database is
    locked" as before), so nothing waits for ever.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # The DB-API connection whose transaction holds the lock (one at a time).
        self._holder: Any = None

    def enter(self, connection: Any) -> None:
        if self._lock.acquire(timeout=BUSY_TIMEOUT_S):
            self._holder = _raw(connection)

    def leave(self, connection: Any) -> None:
        if connection is not None and self._holder is _raw(connection):
            self._holder = None
            self._lock.release()


def _raw(connection: Any) -> Any:
    # The pool hands the dialect its proxy of the DB-API connection; its events, the
    # connection itself.
    return getattr(connection, "dbapi_connection", connection)


_writer_queues: dict[str, _WriterQueue] = {}
_writer_queues_lock = threading.Lock()


def _writer_queue(path: str) -> _WriterQueue:
    # One queue per file: every engine of this process on the file shares it.
    with _writer_queues_lock:
        return _writer_queues.setdefault(path, _WriterQueue())


def _queue_writers(engine: Engine, queue: _WriterQueue) -> None:
    dialect = engine.dialect
    plain_commit, plain_rollback = dialect.do_commit, dialect.do_rollback

    def begin(connection: Any) -> None:
        if connection.get_execution_options().get(READ_ONLY_OPTION):
            connection.exec_driver_sql("BEGIN")
            return
        queue.enter(connection.connection)
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            queue.leave(connection.connection)
            raise

    def do_commit(dbapi_connection: Any) -> None:
        try:
            plain_commit(dbapi_connection)
        finally:
            queue.leave(dbapi_connection)

    def do_rollback(dbapi_connection: Any) -> None:
        try:
            plain_rollback(dbapi_connection)
        finally:
            queue.leave(dbapi_connection)

    def gone(dbapi_connection: Any, *_: Any) -> None:
        # Closed or invalidated in the middle of a transaction: SQLite dropped it.
        queue.leave(dbapi_connection)

    # The dialect's own commit and rollback, so the lock goes back only once SQLite has
    # ended the transaction (the connection events fire before it); this engine's
    # dialect object is its own.
    dialect.do_commit = do_commit  # type: ignore[method-assign]
    dialect.do_rollback = do_rollback  # type: ignore[method-assign]
    event.listen(engine, "begin", begin)
    event.listen(engine.pool, "close", gone)
    event.listen(engine.pool, "invalidate", gone)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def make_read_only_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions for reads that may run while the same thread holds a write transaction
    (e.g. the security module loading a key in the middle of a vend)."""
    return sessionmaker(engine.execution_options(**{READ_ONLY_OPTION: True}))


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema up to ``revision`` (idempotent)."""
    command.upgrade(alembic_config(engine), revision)
