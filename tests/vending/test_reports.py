"""Daily sales reports by vending point and by tariff, in JSON and CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy.orm import Session, sessionmaker

from tests.vending.counter_world import NOW, World, make_world


@pytest.fixture
def world(session_factory: sessionmaker[Session]) -> Iterator[World]:
    yield from make_world(
        session_factory, debt="1000.00", debt_recovery={"percent_of_purchase": "10"}
    )


def test_daily_sales_sum_amounts_units_and_debt_per_local_day(world: World) -> None:
    world.clock.now = NOW - timedelta(days=1)
    yesterday = world.vend("100.00").json()
    world.clock.now = NOW
    first = world.vend("200.00").json()
    second = world.vend("50.00").json()
    report = world.get(
        "/reports/daily-sales",
        "supervisor",
        params={"date_from": "2026-11-23", "date_to": "2026-11-24"},
    ).json()
    by_point = {(r["day"], r["group"]): r for r in report["by_vending_point"]}
    today = by_point[("2026-11-24", "CTR1")]
    assert today["vends"] == 2
    assert today["amount"] == "250.00"
    assert Decimal(today["units_kwh"]) == Decimal(first["units_kwh"]) + Decimal(second["units_kwh"])
    assert today["debt_recovered"] == "25.00"
    assert by_point[("2026-11-23", "CTR1")]["amount"] == "100.00"
    assert by_point[("2026-11-23", "CTR1")]["units_kwh"] == yesterday["units_kwh"]
    by_tariff = {(r["day"], r["group"]): r for r in report["by_tariff"]}
    assert by_tariff[("2026-11-24", "RES-STEP")]["amount"] == "250.00"
    assert report["timezone"] == "Africa/Johannesburg"


def test_reversed_vends_are_counted_apart_from_sales(world: World) -> None:
    world.vend("100.00")
    last = world.vend("30.00").json()
    world.post(f"/vends/{last['receipt_number']}/reversal", "supervisor", {"reason": "refund"})
    row = world.get("/reports/daily-sales", "admin").json()["by_vending_point"][0]
    assert (row["vends"], row["amount"]) == (1, "100.00")
    assert (row["reversed_vends"], row["reversed_amount"]) == (1, "30.00")


def test_the_csv_report_has_the_same_rows(world: World) -> None:
    world.vend("100.00")
    params = {"date_from": "2026-11-24", "date_to": "2026-11-24"}
    as_json = world.get("/reports/daily-sales", "supervisor", params=params).json()
    answer = world.get("/reports/daily-sales", "supervisor", params={**params, "format": "csv"})
    assert answer.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert [r["grouping"] for r in rows] == ["vending_point", "tariff"]
    assert rows[0]["amount"] == as_json["by_vending_point"][0]["amount"] == "100.00"
    assert rows[1]["group"] == "RES-STEP"


def test_a_bad_period_is_refused(world: World) -> None:
    answer = world.get(
        "/reports/daily-sales",
        "supervisor",
        params={"date_from": "2026-11-24", "date_to": "2026-11-01"},
    )
    assert answer.status_code == 422
    assert answer.json()["detail"]["code"] == "invalid_period"
