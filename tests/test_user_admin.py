"""User management by admins through the API: create, change a role, disable and enable
a user; every change audited, a disabled user's tokens dead at once."""

from __future__ import annotations

import threading

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from gridvend.app import create_app
from gridvend.audit import AuditEntry, verify_chain
from gridvend.auth import AuthError, Role, User, change_role, set_active
from tests.conftest import TEST_PASSWORD, make_security_module
from tests.vending.counter_world import quick_bearer_headers

ADMIN = "admin"


@pytest.fixture
def client(session_factory: sessionmaker[Session]) -> TestClient:
    return TestClient(
        create_app(session_factory, security_module=make_security_module(session_factory))
    )


@pytest.fixture
def admin(session_factory: sessionmaker[Session]) -> dict[str, str]:
    return quick_bearer_headers(session_factory, ADMIN)


def _sign_in(client: TestClient, username: str) -> dict[str, str]:
    answer = client.post("/api/auth/token", data={"username": username, "password": TEST_PASSWORD})
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def _create(client: TestClient, admin: dict[str, str], username: str, role: str) -> None:
    answer = client.post(
        "/api/auth/users",
        headers=admin,
        json={"username": username, "role": role, "password": TEST_PASSWORD},
    )
    assert answer.status_code == 201, answer.text


def _audit(session_factory: sessionmaker[Session]) -> list[tuple[str, str, dict[str, str]]]:
    with session_factory() as session:
        assert verify_chain(session).intact
        return [
            (e.action, e.subject, e.detail)
            for e in session.scalars(select(AuditEntry).order_by(AuditEntry.id))
        ]


def _me(client: TestClient, headers: dict[str, str]) -> int:
    return client.get("/api/auth/me", headers=headers).status_code


def test_creating_a_user_through_the_api_is_audited_with_the_admin_as_actor(
    client: TestClient, admin: dict[str, str], session_factory: sessionmaker[Session]
) -> None:
    _create(client, admin, "clerk.anna", "clerk")
    with session_factory() as session:
        entry = session.scalars(select(AuditEntry)).one()
    assert entry.action == "user.create"
    assert entry.subject == "user:clerk.anna"
    assert entry.detail == {"role": "clerk"}
    assert entry.actor.startswith("admin-")
    again = client.post(
        "/api/auth/users",
        headers=admin,
        json={"username": "clerk.anna", "role": "clerk", "password": TEST_PASSWORD},
    )
    assert again.status_code == 409 and again.json()["detail"]["code"] == "user_exists"
    assert len(_audit(session_factory)) == 1


def test_a_role_change_is_audited_and_applies_to_the_next_request(
    client: TestClient, admin: dict[str, str], session_factory: sessionmaker[Session]
) -> None:
    _create(client, admin, "tech.ben", "technician")
    ben = _sign_in(client, "tech.ben")
    answer = client.put("/api/auth/users/tech.ben/role", headers=admin, json={"role": "supervisor"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["role"] == "supervisor"
    assert client.get("/api/auth/me", headers=ben).json()["role"] == "supervisor"
    assert _audit(session_factory)[-1] == (
        "user.role_change",
        "user:tech.ben",
        {"from": "technician", "to": "supervisor"},
    )
    same = client.put("/api/auth/users/tech.ben/role", headers=admin, json={"role": "supervisor"})
    assert same.status_code == 200
    assert len(_audit(session_factory)) == 2


def test_a_demoted_admin_loses_user_management_at_once(
    client: TestClient, admin: dict[str, str]
) -> None:
    _create(client, admin, "admin.cleo", "admin")
    cleo = _sign_in(client, "admin.cleo")
    assert client.get("/api/auth/users", headers=cleo).status_code == 200
    client.put("/api/auth/users/admin.cleo/role", headers=admin, json={"role": "clerk"})
    refused = client.get("/api/auth/users", headers=cleo)
    assert refused.status_code == 403
    assert refused.json()["detail"]["code"] == "forbidden_role"


def test_a_disabled_users_token_stops_at_once_and_they_cannot_sign_in(
    client: TestClient, admin: dict[str, str], session_factory: sessionmaker[Session]
) -> None:
    _create(client, admin, "clerk.dan", "clerk")
    dan = _sign_in(client, "clerk.dan")
    assert _me(client, dan) == 200
    answer = client.post("/api/auth/users/clerk.dan/disable", headers=admin)
    assert answer.status_code == 200 and answer.json()["active"] is False
    assert _me(client, dan) == 401
    login = client.post(
        "/api/auth/token", data={"username": "clerk.dan", "password": TEST_PASSWORD}
    )
    assert login.status_code == 401
    assert _audit(session_factory)[-1] == ("user.disable", "user:clerk.dan", {})


def test_an_enabled_user_signs_in_again_and_old_tokens_stay_dead(
    client: TestClient, admin: dict[str, str], session_factory: sessionmaker[Session]
) -> None:
    _create(client, admin, "clerk.eve", "clerk")
    old = _sign_in(client, "clerk.eve")
    client.post("/api/auth/users/clerk.eve/disable", headers=admin)
    answer = client.post("/api/auth/users/clerk.eve/enable", headers=admin)
    assert answer.status_code == 200 and answer.json()["active"] is True
    assert _me(client, old) == 401
    assert _me(client, _sign_in(client, "clerk.eve")) == 200
    actions = [action for action, _, _ in _audit(session_factory)]
    assert actions == ["user.create", "user.disable", "user.enable"]


def test_disabling_twice_changes_nothing_and_is_audited_once(
    client: TestClient, admin: dict[str, str], session_factory: sessionmaker[Session]
) -> None:
    _create(client, admin, "clerk.fay", "clerk")
    for _ in range(2):
        assert client.post("/api/auth/users/clerk.fay/disable", headers=admin).status_code == 200
    assert [a for a, _, _ in _audit(session_factory)].count("user.disable") == 1


def test_the_last_active_admin_cannot_be_disabled_demoted_or_disable_themself(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    # The fixture's admin is not used: the only admin here is gus.
    helper = quick_bearer_headers(session_factory, ADMIN)
    _create(client, helper, "admin.gus", "admin")
    gus = _sign_in(client, "admin.gus")
    helper_name = client.get("/api/auth/me", headers=helper).json()["username"]
    assert client.post(f"/api/auth/users/{helper_name}/disable", headers=gus).status_code == 200
    before = _audit(session_factory)
    own = client.post("/api/auth/users/admin.gus/disable", headers=gus)
    assert own.status_code == 409 and own.json()["detail"]["code"] == "cannot_disable_self"
    demote = client.put("/api/auth/users/admin.gus/role", headers=gus, json={"role": "clerk"})
    assert demote.status_code == 409 and demote.json()["detail"]["code"] == "last_admin"
    assert _audit(session_factory) == before
    assert _me(client, gus) == 200


def test_two_admins_demoting_each_other_at_once_leave_one_admin(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    """The second demotion waits for the first's locks and then sees it was the last."""
    helper = quick_bearer_headers(session_factory, ADMIN)
    for name in ("admin.ida", "admin.jon"):
        _create(client, helper, name, "admin")
    helper_name = client.get("/api/auth/me", headers=helper).json()["username"]
    with session_factory() as session, session.begin():
        set_active(session, helper_name, active=False, actor="admin.ida")
    outcome: list[str] = []

    def demote_jon() -> None:
        with session_factory() as session, session.begin():
            try:
                change_role(session, "admin.jon", Role.CLERK)
                outcome.append("demoted")
            except AuthError as refusal:
                outcome.append(refusal.code)

    with session_factory() as session, session.begin():
        change_role(session, "admin.ida", Role.CLERK)
        second = threading.Thread(target=demote_jon)
        second.start()
        second.join(timeout=0.5)  # it waits for this transaction's admin locks
    second.join()

    assert outcome == ["last_admin"]
    with session_factory() as session:
        admins = session.scalars(
            select(User.username).where(User.role == "admin", User.active.is_(True))
        ).all()
    assert admins == ["admin.jon"]


def test_unknown_users_and_bad_roles_are_refused(
    client: TestClient, admin: dict[str, str], session_factory: sessionmaker[Session]
) -> None:
    for method, path, body in (
        ("POST", "/api/auth/users/ghost/disable", None),
        ("POST", "/api/auth/users/ghost/enable", None),
        ("PUT", "/api/auth/users/ghost/role", {"role": "clerk"}),
    ):
        answer = client.request(method, path, headers=admin, json=body)
        assert answer.status_code == 404 and answer.json()["detail"]["code"] == "user_not_found"
    _create(client, admin, "clerk.hal", "clerk")
    bad = client.put("/api/auth/users/clerk.hal/role", headers=admin, json={"role": "king"})
    assert bad.status_code == 422
    assert len(_audit(session_factory)) == 1


@pytest.mark.parametrize("role", ["supervisor", "clerk", "technician"])
def test_only_admins_manage_users(
    client: TestClient, admin: dict[str, str], session_factory: sessionmaker[Session], role: str
) -> None:
    _create(client, admin, "clerk.ida", "clerk")
    other = quick_bearer_headers(session_factory, role)
    for method, path, body in (
        ("POST", "/api/auth/users/clerk.ida/disable", None),
        ("PUT", "/api/auth/users/clerk.ida/role", {"role": "admin"}),
    ):
        answer = client.request(method, path, headers=other, json=body)
        assert answer.status_code == 403
    assert len(_audit(session_factory)) == 1
