"""Database engine, sessions and migrations (SQLite embedded, PostgreSQL in production)."""

from __future__ import annotations

import fcntl
import os
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
    """The write transactions on one SQLite file, one at a time, across threads and
    processes.

    SQLite lets one writer in; the others wait in its busy handler, which sleeps 1, 2,
    5, ... up to 100 ms between tries, so a waiting writer sleeps on past the moment the
    lock frees (a p95 of hundreds of ms at 8 concurrent vends; with two worker processes
    the lock stood idle a quarter of the time) and every waiter retries on its own. Here
    writers queue before BEGIN IMMEDIATE and the turn is given back right after the
    COMMIT or ROLLBACK: the threads of this process on a thread lock, then the processes
    on a lock file (:class:`_ProcessTurn`). A writer that cannot have its turn within
    the busy timeout goes on to BEGIN IMMEDIATE unqueued (SQLite then answers "database
    is locked" as before), so nothing waits for ever.
    """

    def __init__(self, path: str) -> None:
        self._lock = threading.Lock()
        self._processes = _ProcessTurn(f"{path}-writers")
        # The DB-API connection whose transaction holds the lock (one at a time), and
        # whether it also has this process's turn at the file.
        self._holder: Any = None
        self._has_turn = False

    def enter(self, connection: Any) -> None:
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        if self._lock.acquire(timeout=BUSY_TIMEOUT_S):
            self._holder = _raw(connection)
            self._has_turn = self._processes.enter(deadline)

    def leave(self, connection: Any) -> None:
        if connection is not None and self._holder is _raw(connection):
            self._holder = None
            if self._has_turn:
                self._has_turn = False
                self._processes.leave()
            self._lock.release()


class _ProcessTurn:
    """The processes' turn at one SQLite file's write lock: an exclusive ``flock`` on a
    lock file beside it (``<database>-writers``; the kernel drops it when a process
    dies). Only the thread holding its process's thread lock asks, so each process
    waits with one thread at most.

    ``flock`` cannot wait with a timeout, and polling it would leave gaps (or, polled
    often, take the GIL from the event loop). So a waiting writer hands the blocking
    ``flock`` to a helper thread, which the kernel wakes the moment the lock is free
    (with the GIL released while it blocks), and waits on a condition with the
    deadline. A writer that gives up leaves the helper to release the lock when it comes.
    The helper is started at the first wait and ends after a minute without one.
    """

    _IDLE, _WANTED, _GRANTED, _HELD, _ABANDONED = range(5)
    _HELPER_IDLE_S = 60.0

    def __init__(self, path: str) -> None:
        self._path = path
        self._fd: int | None = None
        self._pid = 0
        self._cond = threading.Condition()
        self._state = self._IDLE
        self._helper: threading.Thread | None = None

    def enter(self, deadline: float) -> bool:
        """Wait for this process's turn until ``deadline`` (monotonic); whether it came."""
        fd = self._open()
        if fd is None:
            return False
        with self._cond:
            if self._state == self._IDLE:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    self._state = self._HELD
                    return True
                except BlockingIOError:
                    pass
            self._state = self._WANTED
            if self._helper is None:
                self._helper = threading.Thread(
                    target=self._wait_for_the_lock, args=(fd,), name="sqlite-writers", daemon=True
                )
                self._helper.start()
            self._cond.notify_all()
            granted = self._cond.wait_for(
                lambda: self._state == self._GRANTED, max(0.0, deadline - time.monotonic())
            )
            self._state = self._HELD if granted else self._ABANDONED
            return granted

    def leave(self) -> None:
        with self._cond:
            if self._fd is not None and self._state == self._HELD:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                self._state = self._IDLE

    def _wait_for_the_lock(self, fd: int) -> None:
        while True:
            with self._cond:
                if not self._cond.wait_for(
                    lambda: self._state == self._WANTED, self._HELPER_IDLE_S
                ):
                    self._helper = None
                    return
            fcntl.flock(fd, fcntl.LOCK_EX)
            with self._cond:
                if self._state == self._WANTED:
                    self._state = self._GRANTED
                    self._cond.notify_all()
                else:  # the writer gave up waiting
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    self._state = self._IDLE

    def _open(self) -> int | None:
        if self._pid != os.getpid():
            # First use, or a forked child: its threads and condition are not inherited,
            # and it takes turns with its parent on a descriptor of its own. Closing the
            # inherited copy leaves the parent's turn alone (flock belongs to the open
            # file, which the parent still has open).
            if self._fd is not None:
                os.close(self._fd)
            self._pid = os.getpid()
            self._cond = threading.Condition()
            self._state = self._IDLE
            self._helper = None
            try:
                self._fd = os.open(self._path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError:  # e.g. a read-only directory: SQLite's own lock only
                self._fd = None
        return self._fd


def _raw(connection: Any) -> Any:
    # The pool hands the dialect its proxy of the DB-API connection; its events, the
    # connection itself.
    return getattr(connection, "dbapi_connection", connection)


_writer_queues: dict[str, _WriterQueue] = {}
_writer_queues_lock = threading.Lock()


def _writer_queue(path: str) -> _WriterQueue:
    # One queue per file: every engine of this process on the file shares it.
    with _writer_queues_lock:
        queue = _writer_queues.get(path)
        if queue is None:
            queue = _writer_queues[path] = _WriterQueue(path)
        return queue


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
