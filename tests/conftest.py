"""Shared fixtures: a migrated database (SQLite, or PostgreSQL when
GRIDVEND_TEST_DATABASE_URL says so) and a real MQTT broker for the session."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from gridvend.broker import BrokerEndpoint, provide_broker
from gridvend.db import make_engine, make_session_factory, upgrade

TEST_DATABASE_URL = os.environ.get("GRIDVEND_TEST_DATABASE_URL")
TEST_MQTT_URL = os.environ.get("GRIDVEND_TEST_MQTT_URL")


def in_transaction(dbapi_connection: Any) -> bool:
    """Whether the driver's connection is inside a transaction (sqlite3 or psycopg)."""
    if hasattr(dbapi_connection, "in_transaction"):  # sqlite3
        return bool(dbapi_connection.in_transaction)
    from psycopg.pq import TransactionStatus

    return bool(dbapi_connection.info.transaction_status != TransactionStatus.IDLE)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "database_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.db)


@pytest.fixture
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A freshly migrated database of its own for each test.

    On PostgreSQL each test gets its own schema (selected through the connection's
    search_path), dropped afterwards.
    """
    if TEST_DATABASE_URL and TEST_DATABASE_URL.startswith("postgresql"):
        schema = f"t_{uuid.uuid4().hex[:12]}"
        admin = make_engine(TEST_DATABASE_URL)
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        separator = "&" if "?" in TEST_DATABASE_URL else "?"
        url = f"{TEST_DATABASE_URL}{separator}options=-csearch_path%3D{schema}"
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        try:
            yield url
        finally:
            with admin.begin() as connection:
                connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()
    else:
        path = tmp_path_factory.mktemp("db") / "gridvend.db"
        url = f"sqlite:///{path}"
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        yield url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def session_factory(engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


@pytest.fixture(scope="session")
def mqtt_broker() -> Iterator[BrokerEndpoint]:
    """A real broker for the whole run: GRIDVEND_TEST_MQTT_URL, a spawned Mosquitto, or
    the embedded amqtt broker (GRIDVEND_TEST_EMBEDDED_BROKER=1 forces that one)."""
    embedded_only = os.environ.get("GRIDVEND_TEST_EMBEDDED_BROKER") == "1"
    with provide_broker(TEST_MQTT_URL, embedded_only=embedded_only) as endpoint:
        yield endpoint


@pytest.fixture
def mqtt5_broker(mqtt_broker: BrokerEndpoint) -> BrokerEndpoint:
    if not mqtt_broker.supports_v5:
        pytest.skip(f"needs an MQTT 5 broker; {mqtt_broker.kind} speaks MQTT 3.1.1 only")
    return mqtt_broker


@pytest.fixture
def topic_prefix() -> str:
    """A prefix of its own for each test, so tests never see each other's messages."""
    return f"test-{uuid.uuid4().hex[:10]}/"


TEST_PASSWORD = "correct horse battery"


def add_user(session_factory: sessionmaker[Session], username: str, role: str) -> None:
    from gridvend.auth import NewUser, Role, create_user

    with session_factory() as session, session.begin():
        create_user(session, NewUser(username=username, role=Role(role), password=TEST_PASSWORD))


def bearer_headers(session_factory: sessionmaker[Session], role: str) -> dict[str, str]:
    """Authorization headers of a fresh user with ``role``."""
    from datetime import UTC, datetime

    from gridvend.auth import issue_token

    username = f"{role}-{uuid.uuid4().hex[:8]}"
    add_user(session_factory, username, role)
    with session_factory() as session, session.begin():
        token = issue_token(session, username, TEST_PASSWORD, datetime.now(UTC))
    return {"Authorization": f"Bearer {token.access_token}"}


def make_security_module(session_factory: sessionmaker[Session]) -> Any:
    """A software security module with a fresh key-encryption key (no keys stored)."""
    from gridvend.db import make_read_only_session_factory
    from vending.keystore import KeyEncryptionKey, KeyStore
    from vending.security_module import SoftwareSecurityModule

    engine = session_factory.kw["bind"]
    return SoftwareSecurityModule(
        KeyStore(KeyEncryptionKey.generate()), make_read_only_session_factory(engine)
    )
