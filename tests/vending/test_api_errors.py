"""Bad input and wrong roles at the counter: each answers its own error code and stores
nothing (every table's row count, the vending point's cash and the arrears unchanged)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from gridvend.auth import AccessToken
from meter_sim.fleet import sts_meter_pan
from tests.conftest import bearer_headers
from tests.vending.counter_world import World, make_world


@pytest.fixture
def world(session_factory: sessionmaker[Session]) -> Iterator[World]:
    yield from make_world(session_factory, credit_limit="1000.00", debt="100.00")


def _refused(world: World, answer: Any, status: int, code: str, before: dict[str, int]) -> None:
    assert answer.status_code == status, answer.text
    assert answer.json()["detail"]["code"] == code
    assert isinstance(answer.json()["detail"]["message"], str)
    assert world.counts() == before


BAD_AMOUNTS = [
    ("abc", "invalid_amount"),
    ("", "invalid_amount"),
    ("NaN", "invalid_amount"),
    ("-5.00", "invalid_amount"),
    ("0", "invalid_amount"),
    ("10.005", "invalid_amount"),
    (None, "invalid_amount"),
    ("0.01", "amount_below_minimum"),
    ("100000.01", "amount_above_maximum"),
]


def test_a_bad_amount_is_refused_with_its_code(world: World) -> None:
    # One world for every case (setting one up is most of a test's time).
    before = world.counts()
    for amount, code in BAD_AMOUNTS:
        answer = world.vend(amount)  # type: ignore[arg-type]
        assert answer.json()["detail"]["code"] == code, (amount, answer.text)
        _refused(world, answer, 422, code, before)


def test_an_amount_as_a_json_number_is_taken_exactly(world: World) -> None:
    answer = world.post(
        "/vends",
        "clerk",
        content=b'{"meter_number": "%s", "amount": 100.10, "reference": "num-1"}'
        % world.meters[0].encode(),
    )
    assert answer.status_code == 201, answer.text
    assert answer.json()["amount"] == "100.10"


def test_an_unknown_meter_is_refused(world: World) -> None:
    before = world.counts()
    answer = world.post(
        "/vends", "clerk", {"meter_number": sts_meter_pan(999), "amount": "50", "reference": "u1"}
    )
    _refused(world, answer, 404, "meter_not_found", before)


def test_a_mistyped_meter_number_is_refused(world: World) -> None:
    before = world.counts()
    wrong_check_digit = world.meters[0][:-1] + str((int(world.meters[0][-1]) + 1) % 10)
    answer = world.post(
        "/vends", "clerk", {"meter_number": wrong_check_digit, "amount": "50", "reference": "u2"}
    )
    _refused(world, answer, 422, "invalid_meter_number", before)


def test_a_meter_on_no_account_is_refused(world: World) -> None:
    pan = world.add_meter(2)
    before = world.counts()
    answer = world.post("/vends", "clerk", {"meter_number": pan, "amount": "50", "reference": "u3"})
    _refused(world, answer, 409, "meter_not_on_account", before)


def test_a_clerk_without_an_open_shift_cannot_vend(world: World) -> None:
    closed = world.post("/shifts/current/close", "clerk", {"declared_cash": "500.00"})
    assert closed.status_code == 200
    before = world.counts()
    _refused(world, world.vend("50.00"), 409, "no_open_shift", before)


def test_an_exhausted_vending_point_limit_stops_vending_until_banked(world: World) -> None:
    assert world.vend("600.00").status_code == 201
    before = world.counts()
    _refused(world, world.vend("500.00"), 409, "vending_point_limit", before)
    assert world.vend("400.00").status_code == 201  # exactly up to the limit
    banked = world.post("/vending-points/CTR1/banking", "admin", {"reference": "DEP-1"})
    assert banked.status_code == 201
    assert banked.json()["amount"] == "1000.00"
    assert world.vend("500.00").status_code == 201


def test_the_wrong_role_cannot_vend(world: World) -> None:
    before = world.counts()
    for role in ("technician", "supervisor", "admin"):
        answer = world.post(
            "/vends", role, {"meter_number": world.meters[0], "amount": "50", "reference": "x"}
        )
        _refused(world, answer, 403, "forbidden_role", before)


def test_a_request_without_a_token_is_refused(world: World) -> None:
    answer = world.client.post("/api/vending/vends", json={"amount": "5"})
    assert answer.status_code == 401
    assert answer.json()["detail"]["code"] == "not_authenticated"


def test_a_bad_token_is_refused_before_the_body_is_read(world: World) -> None:
    before = world.counts()
    headers = {"Authorization": "Bearer not-a-token"}
    for body in ({"content": b"{not json"}, {"json": {"amount": "abc"}}):
        answer = world.client.post("/api/vending/vends", headers=headers, **body)
        _refused(world, answer, 401, "invalid_token", before)


def test_a_revoked_token_is_refused_on_its_next_vend(world: World) -> None:
    assert world.vend("50.00").status_code == 201
    with world.session_factory() as session, session.begin():
        session.execute(update(AccessToken).values(revoked=True))
    before = world.counts()
    answer = world.post(
        "/vends", "clerk", {"meter_number": world.meters[0], "amount": "50", "reference": "y"}
    )
    _refused(world, answer, 401, "invalid_token", before)


def test_a_body_that_is_not_json_or_has_unknown_fields_is_refused(world: World) -> None:
    before = world.counts()
    _refused(
        world, world.post("/vends", "clerk", content=b"{not json"), 422, "invalid_json", before
    )
    answer = world.post(
        "/vends",
        "clerk",
        {"meter_number": world.meters[0], "amount": "5", "reference": "r", "tip": "1"},
    )
    _refused(world, answer, 422, "invalid_request", before)
    answer = world.post("/vends", "clerk", {"amount": "50", "reference": "no-meter"})
    _refused(world, answer, 422, "meter_or_account_required", before)


def test_a_reversal_needs_a_supervisor_and_a_reason(world: World) -> None:
    number = world.vend("50.00").json()["receipt_number"]
    before = world.counts()
    path = f"/vends/{number}/reversal"
    _refused(world, world.post(path, "clerk", {"reason": "oops"}), 403, "forbidden_role", before)
    _refused(world, world.post(path, "supervisor", {"reason": ""}), 422, "reason_required", before)
    _refused(world, world.post(path, "supervisor", {}), 422, "reason_required", before)
    unknown = world.post("/vends/CTR1-9999999999/reversal", "supervisor", {"reason": "test"})
    _refused(world, unknown, 404, "vend_not_found", before)


# (method, path, body, roles allowed); every other staff role must get forbidden_role.
ROLE_MATRIX: list[tuple[str, str, Any, set[str]]] = [
    ("post", "/customers", {"name": "X"}, {"admin", "supervisor", "clerk"}),
    ("get", "/customers", None, {"admin", "supervisor", "clerk"}),
    ("post", "/tariffs", {}, {"admin", "supervisor"}),
    ("get", "/tariffs", None, {"admin", "supervisor", "clerk", "technician"}),
    ("post", "/vending-points", {}, {"admin"}),
    ("post", "/vending-points/CTR1/banking", {}, {"admin"}),
    ("post", "/shifts", {}, {"clerk"}),
    ("post", "/shifts/current/close", {}, {"clerk"}),
    ("get", "/lookup", None, {"admin", "supervisor", "clerk"}),
    ("post", "/vends", {}, {"clerk"}),
    ("post", "/vends/X/reprint", None, {"supervisor", "clerk"}),
    ("post", "/vends/X/reversal", {}, {"admin", "supervisor"}),
    ("post", "/token-acceptances", {}, {"admin", "supervisor", "technician"}),
    ("get", "/reports/daily-sales", None, {"admin", "supervisor"}),
]


def test_roles_are_enforced_on_every_endpoint(world: World) -> None:
    before = world.counts()
    for method, path, body, allowed in ROLE_MATRIX:
        for role in {"admin", "supervisor", "clerk", "technician"} - allowed:
            kwargs = {"json": body} if method == "post" else {}
            answer = getattr(world.client, method)(
                f"/api/vending{path}", headers=world.as_(role), **kwargs
            )
            assert answer.status_code == 403, (method, path, role, answer.text)
            assert answer.json()["detail"]["code"] == "forbidden_role"
    assert world.counts() == before


def test_a_user_signed_in_with_a_password_gets_the_same_role_checks(
    world: World, session_factory: sessionmaker[Session]
) -> None:
    headers = bearer_headers(session_factory, "technician")
    answer = world.client.get("/api/vending/lookup", headers=headers)
    assert answer.status_code == 403


def test_a_tariff_with_bad_terms_is_refused(world: World) -> None:
    before = world.counts()
    answer = world.post(
        "/tariffs",
        "supervisor",
        {
            "code": "BAD",
            "name": "bad",
            "currency": "ZAR",
            "timezone": "Africa/Johannesburg",
            "versions": [{"effective_from": "2026-01-01", "energy": {"kind": "flat"}}],
        },
    )
    _refused(world, answer, 422, "invalid_tariff", before)
    answer = world.post(
        "/tariffs",
        "supervisor",
        {
            "code": "BAD",
            "name": "bad",
            "currency": "ZAR",
            "timezone": "Africa/Johannesburg",
            "versions": [
                {
                    "effective_from": "2026-01-01",
                    "energy": {
                        "kind": "blocks",
                        "blocks": [
                            {"up_to_kwh": "100", "rate_per_kwh": "1"},
                            {"up_to_kwh": "50", "rate_per_kwh": "2"},
                            {"up_to_kwh": None, "rate_per_kwh": "3"},
                        ],
                    },
                }
            ],
        },
    )
    _refused(world, answer, 422, "invalid_tariff", before)


def test_a_tariff_version_is_never_changed(world: World) -> None:
    stored = world.get("/tariffs/RES-STEP", "clerk").json()
    before = world.counts()
    answer = world.post("/tariffs", "supervisor", stored)
    _refused(world, answer, 409, "version_exists", before)
    later = dict(stored["versions"][0], effective_from="2027-01-01")
    added = world.post("/tariffs", "supervisor", dict(stored, versions=[later]))
    assert added.status_code == 201, added.text
    listed = world.get("/tariffs", "technician").json()
    assert listed[0]["versions"] == ["2026-07-01", "2027-01-01"]


def test_opening_a_second_shift_or_at_an_unknown_point_is_refused(world: World) -> None:
    before = world.counts()
    again = world.post("/shifts", "clerk", {"vending_point": "CTR1", "opening_float": "0"})
    _refused(world, again, 409, "shift_already_open", before)
    world.post("/shifts/current/close", "clerk", {"declared_cash": "500"})
    before = world.counts()
    unknown = world.post("/shifts", "clerk", {"vending_point": "NOPE", "opening_float": "0"})
    _refused(world, unknown, 404, "vending_point_not_found", before)
    bad_float = world.post("/shifts", "clerk", {"vending_point": "CTR1", "opening_float": "x"})
    _refused(world, bad_float, 422, "invalid_amount", before)


def test_a_retry_with_a_bad_amount_is_refused_not_crashed(world: World) -> None:
    assert world.vend("10.00", reference="same").status_code == 201
    before = world.counts()
    for amount in ("10.005", "NaN", "abc"):
        answer = world.vend(amount, reference="same")
        _refused(world, answer, 422, "invalid_amount", before)


def test_bad_query_parameters_answer_the_counters_error_shape(world: World) -> None:
    for path in (
        "/reports/daily-sales?date_from=yesterday",
        "/reports/daily-sales?format=pdf",
    ):
        answer = world.get(path, "supervisor")
        assert answer.status_code == 422
        assert answer.json()["detail"]["code"] == "invalid_request", answer.text
    grade = world.get("/customers/first/grade", "clerk")
    assert grade.status_code == 422
    assert grade.json()["detail"]["code"] == "invalid_request"
