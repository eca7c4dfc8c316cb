"""Passwords and sign-in over the API: a locked sign-in after repeated wrong passwords,
an admin's reset, a user changing their own password, signing out. Every change is
audited without the password, and revokes the tokens it should."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from gridvend.app import create_app
from gridvend.audit import AuditEntry, verify_chain
from gridvend.auth import (
    MAX_FAILED_SIGN_INS,
    SIGN_IN_LOCKOUT,
    AuthError,
    User,
    issue_token,
    record_failed_sign_in,
)
from tests.conftest import TEST_PASSWORD, add_user, make_security_module
from tests.vending.counter_world import quick_bearer_headers

NEW_PASSWORD = "a much longer new secret"


@pytest.fixture
def client(session_factory: sessionmaker[Session]) -> TestClient:
    return TestClient(
        create_app(session_factory, security_module=make_security_module(session_factory))
    )


def _sign_in(client: TestClient, username: str, password: str = TEST_PASSWORD) -> httpx.Response:
    return client.post("/api/auth/token", data={"username": username, "password": password})


def _headers(answer: httpx.Response) -> dict[str, str]:
    token = answer.json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


def _me(client: TestClient, headers: dict[str, str]) -> int:
    return client.get("/api/auth/me", headers=headers).status_code


def _audit(session_factory: sessionmaker[Session]) -> list[tuple[str, str, str, dict[str, str]]]:
    with session_factory() as session:
        assert verify_chain(session).intact
        return [
            (e.action, e.actor, e.subject, e.detail)
            for e in session.scalars(select(AuditEntry).order_by(AuditEntry.id))
        ]


def test_repeated_wrong_passwords_lock_sign_in_until_an_admin_resets_it(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    add_user(session_factory, "clerk.kim", "clerk")
    before = _sign_in(client, "clerk.kim")
    for _ in range(MAX_FAILED_SIGN_INS):
        wrong = _sign_in(client, "clerk.kim", "not the password")
        assert wrong.status_code == 401

    locked = _sign_in(client, "clerk.kim")  # the right password, but locked

    assert locked.status_code == 429
    assert locked.json()["detail"]["code"] == "sign_in_locked"
    assert [a[0] for a in _audit(session_factory)] == ["user.sign_in_locked"]

    admin = quick_bearer_headers(session_factory, "admin")
    reset = client.post(
        "/api/auth/users/clerk.kim/password", headers=admin, json={"new_password": NEW_PASSWORD}
    )
    assert reset.status_code == 200, reset.text
    assert _me(client, _headers(before)) == 401  # signed out everywhere
    assert _sign_in(client, "clerk.kim").status_code == 401
    assert _me(client, _headers(_sign_in(client, "clerk.kim", NEW_PASSWORD))) == 200
    action, _, subject, detail = _audit(session_factory)[-1]
    assert (action, subject, detail) == ("user.password_reset", "user:clerk.kim", {})
    assert NEW_PASSWORD not in str(_audit(session_factory))


def test_a_lock_ends_by_itself_and_a_good_sign_in_clears_the_count(
    session_factory: sessionmaker[Session],
) -> None:
    add_user(session_factory, "tech.lee", "technician")
    now = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    with session_factory() as session, session.begin():
        for _ in range(MAX_FAILED_SIGN_INS - 1):
            assert record_failed_sign_in(session, "tech.lee", now) is None
        issue_token(session, "tech.lee", TEST_PASSWORD, now)  # clears the count
        assert session.scalars(select(User.failed_sign_ins)).one() == 0
        for _ in range(MAX_FAILED_SIGN_INS - 1):
            record_failed_sign_in(session, "tech.lee", now)
        until = record_failed_sign_in(session, "tech.lee", now)
        assert until == now + SIGN_IN_LOCKOUT
        with pytest.raises(AuthError) as refused:
            issue_token(session, "tech.lee", TEST_PASSWORD, until - timedelta(seconds=1))
        assert refused.value.code == "sign_in_locked"
        assert issue_token(session, "tech.lee", TEST_PASSWORD, until).access_token
        assert record_failed_sign_in(session, "nobody.here", now) is None


def test_a_user_changes_their_own_password_and_gets_a_new_token(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    add_user(session_factory, "sup.max", "supervisor")
    first = _headers(_sign_in(client, "sup.max"))
    second = _headers(_sign_in(client, "sup.max"))

    wrong = client.post(
        "/api/auth/password",
        headers=first,
        json={"current_password": "not it at all", "new_password": NEW_PASSWORD},
    )
    same = client.post(
        "/api/auth/password",
        headers=first,
        json={"current_password": TEST_PASSWORD, "new_password": TEST_PASSWORD},
    )
    short = client.post(
        "/api/auth/password",
        headers=first,
        json={"current_password": TEST_PASSWORD, "new_password": "short"},
    )
    assert (wrong.status_code, wrong.json()["detail"]["code"]) == (403, "wrong_password")
    assert (same.status_code, same.json()["detail"]["code"]) == (422, "password_unchanged")
    assert short.status_code == 422
    assert _audit(session_factory) == [] and _me(client, second) == 200

    changed = client.post(
        "/api/auth/password",
        headers=first,
        json={"current_password": TEST_PASSWORD, "new_password": NEW_PASSWORD},
    )

    assert changed.status_code == 200, changed.text
    assert _me(client, first) == 401 and _me(client, second) == 401
    assert _me(client, _headers(changed)) == 200
    assert _sign_in(client, "sup.max").status_code == 401
    assert _sign_in(client, "sup.max", NEW_PASSWORD).status_code == 200
    assert [(a, s) for a, _, s, _ in _audit(session_factory)] == [
        ("user.password_change", "user:sup.max")
    ]


def test_signing_out_revokes_only_that_token(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    add_user(session_factory, "clerk.ned", "clerk")
    leaving = _headers(_sign_in(client, "clerk.ned"))
    staying = _headers(_sign_in(client, "clerk.ned"))

    assert client.post("/api/auth/sign-out", headers=leaving).status_code == 204

    assert _me(client, leaving) == 401
    assert _me(client, staying) == 200
    assert client.post("/api/auth/sign-out").status_code == 401


def test_only_an_admin_resets_passwords_and_unknown_users_are_404(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    add_user(session_factory, "clerk.oli", "clerk")
    supervisor = quick_bearer_headers(session_factory, "supervisor")
    admin = quick_bearer_headers(session_factory, "admin")
    body = {"new_password": NEW_PASSWORD}
    denied = client.post("/api/auth/users/clerk.oli/password", headers=supervisor, json=body)
    unknown = client.post("/api/auth/users/ghost.one/password", headers=admin, json=body)
    assert denied.status_code == 403
    assert (unknown.status_code, unknown.json()["detail"]["code"]) == (404, "user_not_found")
    assert _sign_in(client, "clerk.oli").status_code == 200
    assert _audit(session_factory) == []
