"""Pooled server connections: checked for life only after they have been idle (a ping on
every check-out costs a round trip per transaction)."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from gridvend.db import make_engine


@pytest.fixture
def server_url(database_url: str) -> str:
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite has no server connection to lose")
    return database_url


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(url: str, pid: int) -> None:
    admin = make_engine(url)
    try:
        with admin.connect() as connection:
            connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            connection.commit()
            # pg_terminate_backend only signals the backend: wait until it has gone.
            for _ in range(200):
                gone = connection.execute(
                    text("SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = :pid"),
                    {"pid": pid},
                ).scalar_one()
                connection.commit()
                if gone:
                    return
                time.sleep(0.01)
            raise AssertionError(f"backend {pid} still running")
    finally:
        admin.dispose()


def test_an_idle_connection_the_server_dropped_is_replaced_before_use(server_url: str) -> None:
    engine = make_engine(server_url, ping_after_idle_s=0.0)
    try:
        first = _backend_pid(engine)
        _terminate(server_url, first)
        # The ping finds the connection dead: the pool hands out a new one, no error.
        assert _backend_pid(engine) != first
    finally:
        engine.dispose()


def test_a_connection_used_moments_ago_is_not_pinged(server_url: str) -> None:
    engine = make_engine(server_url, ping_after_idle_s=3600.0)
    try:
        first = _backend_pid(engine)
        _terminate(server_url, first)
        # Within the window the connection goes out unchecked: the statement meets the
        # dropped connection (as it would if the server went away mid-transaction) ...
        with pytest.raises(OperationalError):
            _backend_pid(engine)
        # ... and the pool has replaced it for the next one.
        assert _backend_pid(engine) != first
    finally:
        engine.dispose()
