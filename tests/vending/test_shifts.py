"""Shifts and the cash-up: counts and totals by payment method, expected against
declared cash, the variance; reversed cash vends leave the drawer."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from tests.vending.counter_world import World, make_world


@pytest.fixture
def world(session_factory: sessionmaker[Session]) -> Iterator[World]:
    yield from make_world(session_factory)


def _by_method(report: dict[str, object]) -> dict[str, dict[str, object]]:
    return {m["method"]: m for m in report["by_payment_method"]}  # type: ignore[attr-defined, index]


def test_the_cash_up_counts_each_payment_method_and_finds_the_variance(world: World) -> None:
    world.vend("100.00")
    world.vend("50.50")
    world.vend("200.00", payment_method="card")
    world.vend("75.00", payment_method="mobile_money")
    interim = world.get("/shifts/current", "clerk").json()
    assert interim["expected_cash"] == "650.50"  # float 500.00 + cash 150.50
    assert interim["declared_cash"] is None and interim["variance"] is None

    report = world.post("/shifts/current/close", "clerk", {"declared_cash": "640.00"}).json()
    methods = _by_method(report)
    assert (methods["cash"]["count"], methods["cash"]["amount"]) == (2, "150.50")
    assert (methods["card"]["count"], methods["card"]["amount"]) == (1, "200.00")
    assert (methods["mobile_money"]["count"], methods["mobile_money"]["amount"]) == (1, "75.00")
    assert methods["bank"]["count"] == 0
    assert report["vends"] == 4
    assert report["net_takings"] == "425.50"
    assert report["opening_float"] == "500.00"
    assert report["expected_cash"] == "650.50"
    assert report["declared_cash"] == "640.00"
    assert report["variance"] == "-10.50"
    assert report["closed_at"] is not None
    # A supervisor reads the closed shift's report again, unchanged.
    again = world.get(f"/shifts/{report['shift_id']}/cash-up", "supervisor").json()
    assert again == report


def test_a_reversed_cash_vend_is_not_expected_in_the_drawer(world: World) -> None:
    world.vend("100.00")
    second = world.vend("40.00").json()
    world.post(f"/vends/{second['receipt_number']}/reversal", "supervisor", {"reason": "refund"})
    report = world.post("/shifts/current/close", "clerk", {"declared_cash": "600.00"}).json()
    cash = _by_method(report)["cash"]
    assert (cash["count"], cash["reversed_count"], cash["net"]) == (2, 1, "100.00")
    assert report["expected_cash"] == "600.00"
    assert report["variance"] == "0.00"


def test_a_closed_shift_stops_vending_and_a_new_one_starts_from_zero(world: World) -> None:
    world.vend("100.00")
    world.post("/shifts/current/close", "clerk", {"declared_cash": "600.00"})
    assert world.vend("10.00").json()["detail"]["code"] == "no_open_shift"
    opened = world.post("/shifts", "clerk", {"vending_point": "CTR1", "opening_float": "0"})
    assert opened.status_code == 201
    assert opened.json()["vends"] == 0 and opened.json()["expected_cash"] == "0.00"
    assert world.vend("10.00").status_code == 201


def test_closing_without_an_open_shift_is_refused(world: World) -> None:
    world.post("/shifts/current/close", "clerk", {"declared_cash": "500"})
    before = world.counts()
    again = world.post("/shifts/current/close", "clerk", {"declared_cash": "500"})
    assert again.status_code == 409 and again.json()["detail"]["code"] == "no_open_shift"
    assert world.counts() == before


def test_banking_resets_the_outstanding_cash_and_is_listed(world: World) -> None:
    world.vend("100.00")
    points = world.get("/vending-points", "clerk").json()
    assert points[0]["outstanding"] == "100.00"
    banked = world.post("/vending-points/CTR1/banking", "admin", {"reference": "DEP-9"})
    assert banked.json()["amount"] == "100.00"
    assert world.get("/vending-points", "clerk").json()[0]["outstanding"] == "0.00"
    nothing = world.post("/vending-points/CTR1/banking", "admin", {"reference": "DEP-10"})
    assert nothing.json()["detail"]["code"] == "nothing_to_bank"


def test_a_clerk_sees_only_their_own_shifts(world: World) -> None:
    shift_id = world.get("/shifts/current", "clerk").json()["shift_id"]
    from tests.vending.counter_world import quick_bearer_headers

    other = quick_bearer_headers(world.session_factory, "clerk")
    answer = world.client.get(f"/api/vending/shifts/{shift_id}/cash-up", headers=other)
    assert answer.status_code == 403
    assert answer.json()["detail"]["code"] == "not_your_shift"
