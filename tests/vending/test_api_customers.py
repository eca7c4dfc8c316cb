"""Customers and accounts at the counter: search, show, grade, moving a meter."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest
from sqlalchemy.orm import Session, sessionmaker

from tests.vending.counter_world import World, make_world


@pytest.fixture
def world(session_factory: sessionmaker[Session]) -> Iterator[World]:
    yield from make_world(session_factory, debt="250.00", debt_recovery={"percent_of_purchase": 25})


def test_customers_are_found_by_name_phone_or_meter(world: World) -> None:
    world.post("/customers", "clerk", {"name": "Sipho Dlamini", "phone": "011 555 0199"})
    by_name = world.get("/customers", "clerk", params={"name": "thandi"}).json()
    by_phone = world.get("/customers", "clerk", params={"phone": "555 0101"}).json()
    by_meter = world.get("/customers", "clerk", params={"meter": world.meters[0]}).json()
    assert [c["name"] for c in by_name] == ["Thandi Mokoena"]
    assert by_phone == by_name == by_meter
    assert len(world.get("/customers", "clerk").json()) == 2


def test_a_customer_is_shown_with_accounts_and_meters(world: World) -> None:
    shown = world.get(f"/customers/{world.customer_id}", "supervisor").json()
    assert shown["accounts"][0]["account_number"] == world.account_number
    assert shown["accounts"][0]["meters"] == [world.meters[0][6:17]]
    assert shown["accounts"][0]["arrears"] == "250.00"
    missing = world.get("/customers/9999", "clerk")
    assert missing.status_code == 404
    assert missing.json()["detail"]["code"] == "customer_not_found"


def test_the_account_shows_arrears_rule_balance_and_meter_history(world: World) -> None:
    other = world.post(
        "/accounts", "clerk", {"customer_id": world.customer_id, "tariff_code": "RES-STEP"}
    ).json()
    moved = world.post(
        f"/accounts/{other['account_number']}/meters", "clerk", {"meter_number": world.meters[0]}
    )
    assert moved.status_code == 201
    old = world.get(f"/accounts/{world.account_number}", "clerk").json()
    assert old["meters"] == []
    assert old["meter_history"][0]["unlinked_at"] is not None
    assert old["arrears"] == "250.00"
    assert old["debt_recovery"]["percent_of_purchase"] == "25"
    assert old["balance"] == "0.00"
    new = world.get(f"/accounts/{other['account_number']}", "clerk").json()
    assert new["meters"] == [world.meters[0][6:17]]
    again = world.post(
        f"/accounts/{other['account_number']}/meters", "clerk", {"meter_number": world.meters[0]}
    )
    assert again.json()["detail"]["code"] == "meter_already_linked"


def test_the_grade_follows_consumption_voltage_and_payment_record(world: World) -> None:
    ordinary = world.get(f"/customers/{world.customer_id}/grade", "clerk").json()
    assert ordinary["grade"] == "ordinary" and ordinary["stars"] == 0
    world.vend("1000.00")
    world.client.put(
        f"/api/vending/customers/{world.customer_id}/supply-voltage",
        headers=world.as_("supervisor"),
        json={"supply_voltage_v": 400},
    )
    graded = world.get(f"/customers/{world.customer_id}/grade", "clerk").json()
    assert Decimal(graded["annual_kwh"]) > 0
    assert graded["supply_voltage_v"] == 400
    assert graded["grade"] == "ordinary"  # far below the 50 000 kWh of one star


def test_a_customer_with_bad_fields_is_refused(world: World) -> None:
    before = world.counts()
    answer = world.post("/customers", "clerk", {"name": "", "email": "not-an-address"})
    assert answer.status_code == 422
    assert answer.json()["detail"]["code"] == "invalid_request"
    unknown = world.post("/accounts", "clerk", {"customer_id": 999, "tariff_code": "RES-STEP"})
    assert unknown.json()["detail"]["code"] == "customer_not_found"
    no_tariff = world.post(
        "/accounts", "clerk", {"customer_id": world.customer_id, "tariff_code": "NOPE"}
    )
    assert no_tariff.json()["detail"]["code"] == "tariff_not_found"
    assert world.counts() == before
