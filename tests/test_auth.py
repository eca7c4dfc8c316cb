from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event, update
from sqlalchemy.orm import Session, sessionmaker

from gridvend.app import create_app
from gridvend.auth import AccessToken, Auth, Role
from tests.conftest import (
    TEST_PASSWORD,
    add_user,
    bearer_headers,
    in_transaction,
    make_security_module,
)


@pytest.fixture
def client(session_factory: sessionmaker[Session]) -> TestClient:
    return TestClient(
        create_app(session_factory, security_module=make_security_module(session_factory))
    )


def test_a_user_signs_in_with_the_password_and_gets_a_bearer_token(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    add_user(session_factory, "clerk.one", "clerk")
    response = client.post(
        "/api/auth/token", data={"username": "clerk.one", "password": TEST_PASSWORD}
    )
    assert response.status_code == 200
    token = response.json()["access_token"]
    me = client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert me.json() == {"username": "clerk.one", "role": "clerk"}


@pytest.mark.parametrize("username", ["clerk.one", "nobody"])
def test_a_wrong_password_or_unknown_user_is_refused_alike(
    client: TestClient, session_factory: sessionmaker[Session], username: str
) -> None:
    add_user(session_factory, "clerk.one", "clerk")
    response = client.post("/api/auth/token", data={"username": username, "password": "wrong-pw"})
    assert response.status_code == 401
    assert response.json()["detail"]["code"] == "invalid_credentials"


def test_requests_without_a_token_are_refused(client: TestClient) -> None:
    response = client.get("/api/meters")
    assert response.status_code == 401
    assert response.json()["detail"]["code"] == "not_authenticated"


def test_a_role_not_allowed_for_an_endpoint_gets_403(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    response = client.post(
        "/api/meters",
        json={"serial": "M-1"},
        headers=bearer_headers(session_factory, "clerk"),
    )
    assert response.status_code == 403
    assert response.json()["detail"]["code"] == "forbidden_role"
    technician = client.post(
        "/api/meters",
        json={"serial": "M-1"},
        headers=bearer_headers(session_factory, "technician"),
    )
    assert technician.status_code == 201


def test_an_expired_token_is_refused(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    headers = bearer_headers(session_factory, "admin")
    with session_factory() as session, session.begin():
        session.execute(
            update(AccessToken).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    response = client.get("/api/meters", headers=headers)
    assert response.status_code == 401
    assert response.json()["detail"]["code"] == "invalid_token"


def test_only_an_admin_creates_users(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    body = {"username": "tech.two", "role": "technician", "password": "a long password"}
    refused = client.post(
        "/api/auth/users", json=body, headers=bearer_headers(session_factory, "supervisor")
    )
    assert refused.status_code == 403
    created = client.post(
        "/api/auth/users", json=body, headers=bearer_headers(session_factory, "admin")
    )
    assert created.status_code == 201
    assert "password" not in created.text
    again = client.post(
        "/api/auth/users", json=body, headers=bearer_headers(session_factory, "admin")
    )
    assert again.status_code == 409


def test_a_token_check_is_one_statement_outside_any_transaction(
    engine: Engine, session_factory: sessionmaker[Session]
) -> None:
    # Every request checks its token: a transaction around the one select would cost
    # PostgreSQL a BEGIN and, when the connection goes back to the pool, a ROLLBACK.
    token = bearer_headers(session_factory, "clerk")["Authorization"].removeprefix("Bearer ")
    left_open: list[bool] = []

    def before_reset(dbapi_connection: object, *_: object) -> None:
        left_open.append(in_transaction(dbapi_connection))

    event.listen(engine.pool, "reset", before_reset)
    principal = Auth(session_factory).check(token, frozenset({Role.CLERK}))
    assert principal.role is Role.CLERK
    assert left_open == [False]
