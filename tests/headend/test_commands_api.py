"""The command REST API: roles, validation with specific codes, and reading commands back."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from gridvend.auth import Auth
from headend.commands import CommandQueue
from headend.commands.api import make_router
from headend.commands.models import MeterCommand
from headend.models import MeterLifecycle
from tests.conftest import bearer_headers
from tests.headend.commands_support import (
    REPLIES_TOPIC,
    Clock,
    add_meter,
    audit_actions,
    count,
    make_queue,
    reply_to,
)


@pytest.fixture
def queue(session_factory: sessionmaker[Session]) -> CommandQueue:
    return make_queue(session_factory, Clock())


@pytest.fixture
def client(session_factory: sessionmaker[Session], queue: CommandQueue) -> TestClient:
    app = FastAPI()
    auth = Auth(session_factory)
    app.include_router(make_router(session_factory, require=auth.require, queue=queue))
    return TestClient(app)


def _as(session_factory: sessionmaker[Session], role: str) -> dict[str, str]:
    return bearer_headers(session_factory, role)


def test_technician_queues_a_disconnect_and_reads_it_back(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    meter = add_meter(session_factory, "M-1")
    headers = _as(session_factory, "technician")
    response = client.post(
        f"/api/meters/{meter}/commands",
        json={"name": "disconnect", "reason": "relay test at commissioning"},
        headers=headers,
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert response.headers["Location"] == f"/api/commands/{body['id']}"
    assert (body["state"], body["name"], body["meter_id"]) == ("queued", "disconnect", meter)
    assert body["requested_by"].startswith("technician-")
    assert audit_actions(session_factory) == ["meter_command.requested"]

    fetched = client.get(f"/api/commands/{body['id']}", headers=headers)
    assert fetched.status_code == 200
    assert fetched.json() == body


def test_meter_commands_are_listed_newest_first_and_filtered_by_state(
    client: TestClient, session_factory: sessionmaker[Session], queue: CommandQueue
) -> None:
    meter = add_meter(session_factory, "M-1")
    headers = _as(session_factory, "supervisor")
    ids = [
        client.post(f"/api/meters/{meter}/commands", json={"name": name}, headers=headers).json()[
            "id"
        ]
        for name in ("read_now", "disconnect")
    ]
    [sent] = queue.claim_due(instance="test")
    queue.handle_reply(REPLIES_TOPIC, reply_to(sent))  # read_now confirmed by its reply

    listed = client.get(f"/api/meters/{meter}/commands", headers=headers).json()
    assert [c["id"] for c in listed] == ids[::-1]
    confirmed = client.get(
        f"/api/meters/{meter}/commands", params={"state": "confirmed"}, headers=headers
    ).json()
    assert [c["id"] for c in confirmed] == [ids[0]]
    everywhere = client.get("/api/commands", params={"state": "queued"}, headers=headers).json()
    assert [c["id"] for c in everywhere] == [ids[1]]


@pytest.mark.parametrize(
    ("role", "name", "expected"),
    [
        ("clerk", "disconnect", 403),
        ("clerk", "connect", 403),
        ("clerk", "set_power_limit", 403),
        ("clerk", "read_now", 202),
        ("clerk", "push_token", 202),
        ("technician", "connect", 202),
        ("admin", "set_power_limit", 202),
        ("channel", "read_now", 403),
    ],
)
def test_relay_and_limit_commands_need_an_engineering_role(
    client: TestClient,
    session_factory: sessionmaker[Session],
    role: str,
    name: str,
    expected: int,
) -> None:
    meter = add_meter(session_factory, "M-1")
    params: dict[str, object] = {
        "set_power_limit": {"watts": 3000},
        "push_token": {"token": "12345678901234567890"},
    }.get(name, {})
    response = client.post(
        f"/api/meters/{meter}/commands",
        json={"name": name, "params": params},
        headers=_as(session_factory, role),
    )
    assert response.status_code == expected, response.text
    if expected == 403:
        assert response.json()["detail"]["code"] == "forbidden_role"
        assert count(session_factory, MeterCommand) == 0


def test_request_without_a_token_is_unauthenticated(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    meter = add_meter(session_factory, "M-1")
    response = client.post(f"/api/meters/{meter}/commands", json={"name": "disconnect"})
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("body", "status_code", "code"),
    [
        ({"name": "explode"}, 422, "unknown_command"),
        ({"name": "set_power_limit", "params": {"watts": -5}}, 422, "invalid_params"),
        ({"name": "disconnect", "params": {"watts": 5}}, 422, "invalid_params"),
        ({"name": "push_token", "params": {"token": "12"}}, 422, "invalid_params"),
    ],
)
def test_bad_command_is_refused_with_a_specific_code_and_nothing_stored(
    client: TestClient,
    session_factory: sessionmaker[Session],
    body: dict[str, object],
    status_code: int,
    code: str,
) -> None:
    meter = add_meter(session_factory, "M-1")
    response = client.post(
        f"/api/meters/{meter}/commands", json=body, headers=_as(session_factory, "admin")
    )
    assert response.status_code == status_code, response.text
    assert response.json()["detail"]["code"] == code
    assert count(session_factory, MeterCommand) == 0


def test_unknown_and_decommissioned_meters_and_unknown_commands_have_their_codes(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    headers = _as(session_factory, "admin")
    retired = add_meter(session_factory, "M-OLD", lifecycle=MeterLifecycle.DECOMMISSIONED)
    missing = client.post("/api/meters/4040/commands", json={"name": "connect"}, headers=headers)
    assert (missing.status_code, missing.json()["detail"]["code"]) == (404, "meter_not_found")
    gone = client.post(f"/api/meters/{retired}/commands", json={"name": "connect"}, headers=headers)
    assert (gone.status_code, gone.json()["detail"]["code"]) == (409, "meter_decommissioned")
    nothing = client.get("/api/commands/4040", headers=headers)
    assert (nothing.status_code, nothing.json()["detail"]["code"]) == (404, "command_not_found")
    listing = client.get("/api/meters/4040/commands", headers=headers)
    assert (listing.status_code, listing.json()["detail"]["code"]) == (404, "meter_not_found")


def test_repeated_request_with_the_same_idempotency_key_returns_the_same_command(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    meter = add_meter(session_factory, "M-1")
    headers = _as(session_factory, "technician")
    body = {"name": "disconnect", "idempotency_key": "ticket-881"}
    first = client.post(f"/api/meters/{meter}/commands", json=body, headers=headers).json()
    second = client.post(f"/api/meters/{meter}/commands", json=body, headers=headers).json()
    assert first["id"] == second["id"]
    clash = client.post(
        f"/api/meters/{meter}/commands",
        json={"name": "connect", "idempotency_key": "ticket-881"},
        headers=headers,
    )
    assert (clash.status_code, clash.json()["detail"]["code"]) == (409, "idempotency_key_reused")


def test_pushed_token_is_masked_in_the_api(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    meter = add_meter(session_factory, "M-1")
    response = client.post(
        f"/api/meters/{meter}/commands",
        json={"name": "push_token", "params": {"token": "1234 5678 9012 3456 7890"}},
        headers=_as(session_factory, "clerk"),
    )
    assert response.json()["params"] == {"token": "****************7890"}
