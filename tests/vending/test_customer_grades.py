"""Customer grades from stored data: supply voltage on the customer, consumption from
vends and rated intervals, late payments from the ledger, disconnections from the
balance engine's decisions; shown on the account, thresholds from settings."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from itertools import count

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from gridvend.app import create_app
from gridvend.audit import AuditEntry
from gridvend.settings import Settings
from tests.vending.counter_world import NOW, World, make_world
from vending.customer_grades import grading_facts
from vending.grading import Grade
from vending.models import Account, BalanceDecision, Customer, LedgerEntry, RatedInterval

_references = count(1)

# Low thresholds, so a test customer can reach every grade.
SMALL_SITE = {
    "1": {"min_annual_kwh": 100, "min_supply_voltage_v": 230, "max_late_payments_12m": 2,
          "max_disconnections_12m": 1},
    "2": {"min_annual_kwh": 1000, "min_supply_voltage_v": 400, "max_late_payments_12m": 0},
    "3": {"min_annual_kwh": 10000, "min_supply_voltage_v": 11000, "max_late_payments_12m": 0},
}  # fmt: skip


@pytest.fixture
def world(session_factory: sessionmaker[Session]) -> Iterator[World]:
    yield from make_world(session_factory)


def _account_id(world: World) -> int:
    with world.session_factory() as session:
        account = session.scalar(
            select(Account).where(Account.account_number == world.account_number)
        )
        assert account is not None
        return account.id


def _ledger(world: World, kind: str, amount_minor: int, days_ago: float) -> None:
    with world.session_factory() as session, session.begin():
        session.add(
            LedgerEntry(
                account_id=_account_id(world),
                kind=kind,
                amount_minor=amount_minor,
                reference=f"t{next(_references)}",
                detail={},
                created_at=NOW - timedelta(days=days_ago),
            )
        )


def _disconnection(world: World, days_ago: float) -> None:
    with world.session_factory() as session, session.begin():
        session.add(
            BalanceDecision(
                account_id=_account_id(world),
                meter_id=1,
                decided_at=NOW - timedelta(days=days_ago),
                action="disconnect",
                reason="balance exhausted and grace period over",
                balance_minor=-10,
            )
        )


def _rated(world: World, kwh: str, days_ago: float) -> None:
    start = NOW - timedelta(days=days_ago)
    with world.session_factory() as session, session.begin():
        session.add(
            RatedInterval(
                account_id=_account_id(world),
                meter_id=1,
                quantity="energy_import",
                t_start=start,
                t_end=start + timedelta(minutes=30),
                energy_kwh=Decimal(kwh),
                charge_minor=100,
                source_offset=next(_references),
                rated_at=start,
            )
        )


def _facts(world: World) -> dict[str, object]:
    with world.session_factory() as session:
        customer = session.get_one(Customer, world.customer_id)
        facts = grading_facts(session, customer, NOW)
    return {
        "kwh": facts.annual_kwh,
        "volts": facts.supply_voltage_v,
        "late": facts.late_payments_12m,
        "cuts": facts.disconnections_12m,
    }


def test_a_new_customer_is_ordinary_on_230_v_and_the_account_shows_it(world: World) -> None:
    account = world.get(f"/accounts/{world.account_number}", "clerk").json()
    assert account["customer_grade"] == {
        "grade": "ordinary",
        "stars": 0,
        "annual_kwh": "0.0",
        "supply_voltage_v": 230,
        "late_payments_12m": 0,
        "disconnections_12m": 0,
    }
    assert world.get(f"/customers/{world.customer_id}", "clerk").json()["supply_voltage_v"] == 230


def test_the_supply_voltage_is_given_at_creation_and_changed_by_a_supervisor(
    world: World,
) -> None:
    made = world.post("/customers", "clerk", {"name": "Mine Works", "supply_voltage_v": 11000})
    assert made.status_code == 201 and made.json()["supply_voltage_v"] == 11000
    changed = world.client.put(
        f"/api/vending/customers/{world.customer_id}/supply-voltage",
        headers=world.as_("supervisor"),
        json={"supply_voltage_v": 400},
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["supply_voltage_v"] == 400
    assert _facts(world)["volts"] == 400
    with world.session_factory() as session:
        entry = session.scalars(select(AuditEntry).order_by(AuditEntry.id.desc())).first()
    assert entry is not None and entry.action == "customer.supply_voltage"
    assert entry.detail == {"before": 230, "after": 400}


@pytest.mark.parametrize(
    ("role", "body", "status", "code"),
    [
        ("clerk", {"supply_voltage_v": 400}, 403, "forbidden_role"),
        ("supervisor", {"supply_voltage_v": 0}, 422, "invalid_supply_voltage"),
        ("supervisor", {"supply_voltage_v": "400"}, 422, "invalid_supply_voltage"),
        ("supervisor", {}, 422, "invalid_supply_voltage"),
    ],
)
def test_a_bad_supply_voltage_change_is_refused_and_changes_nothing(
    world: World, role: str, body: dict[str, object], status: int, code: str
) -> None:
    before = world.counts()
    answer = world.client.put(
        f"/api/vending/customers/{world.customer_id}/supply-voltage",
        headers=world.as_(role),
        json=body,
    )
    assert answer.status_code == status
    assert answer.json()["detail"]["code"] == code
    assert world.counts() == before
    assert _facts(world)["volts"] == 230
    bad = world.post("/customers", "clerk", {"name": "X", "supply_voltage_v": -5})
    assert bad.json()["detail"]["code"] == "invalid_supply_voltage"


def test_consumption_counts_vends_and_rated_intervals_of_the_last_365_days(world: World) -> None:
    vend = world.vend("500.00").json()
    _rated(world, "12.5", days_ago=10)
    _rated(world, "99", days_ago=400)  # too old to count
    assert _facts(world)["kwh"] == Decimal(vend["units_kwh"]) + Decimal("12.5")


def test_a_reversed_vend_counts_no_consumption(world: World) -> None:
    receipt = world.vend("500.00").json()["receipt_number"]
    reversed_ = world.post(f"/vends/{receipt}/reversal", "supervisor", {"reason": "wrong meter"})
    assert reversed_.status_code == 200, reversed_.text
    assert _facts(world)["kwh"] == 0


def test_a_top_up_after_the_balance_ran_out_is_a_late_payment(world: World) -> None:
    _ledger(world, "payment", 10_000, days_ago=100)  # the first top-up: never late
    _ledger(world, "consumption", -6_000, days_ago=90)
    _ledger(world, "payment", 5_000, days_ago=80)  # balance 4 000 before: on time
    _ledger(world, "consumption", -9_000, days_ago=70)  # balance 0: ran out
    _ledger(world, "payment", 5_000, days_ago=60)  # late
    _ledger(world, "consumption", -7_000, days_ago=50)  # balance -2 000
    _ledger(world, "payment", 1_000, days_ago=40)  # late, still below zero
    _ledger(world, "payment", 5_000, days_ago=39)  # late: the balance was -1 000
    assert _facts(world)["late"] == 3


def test_late_payments_older_than_a_year_do_not_count(world: World) -> None:
    _ledger(world, "payment", 1_000, days_ago=500)
    _ledger(world, "consumption", -1_000, days_ago=450)
    _ledger(world, "payment", 1_000, days_ago=400)
    assert _facts(world)["late"] == 0


def test_disconnections_are_the_engines_disconnect_decisions_of_the_year(world: World) -> None:
    _disconnection(world, days_ago=30)
    _disconnection(world, days_ago=200)
    _disconnection(world, days_ago=366)
    assert _facts(world)["cuts"] == 2


def test_the_thresholds_come_from_settings(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRIDVEND_GRADING_THRESHOLDS", json.dumps(SMALL_SITE))
    policy = Settings().grading_policy()
    assert policy.thresholds[Grade.TWO_STAR].min_supply_voltage_v == 400
    app = create_app(world.session_factory, security_module=world.security_module,
                     grading_policy=policy)  # fmt: skip
    with TestClient(app) as client:

        def grade() -> dict[str, object]:
            answer = client.get(
                f"/api/vending/accounts/{world.account_number}", headers=world.as_("clerk")
            )
            assert answer.status_code == 200, answer.text
            shown: dict[str, object] = answer.json()["customer_grade"]
            alone = client.get(
                f"/api/vending/customers/{world.customer_id}/grade", headers=world.as_("clerk")
            ).json()
            assert alone == {"customer_id": world.customer_id, **shown}
            return shown

        _rated(world, "2000", days_ago=5)
        assert grade()["grade"] == "1-star"
        world.client.put(
            f"/api/vending/customers/{world.customer_id}/supply-voltage",
            headers=world.as_("supervisor"),
            json={"supply_voltage_v": 400},
        )
        assert grade()["grade"] == "2-star"
        _disconnection(world, days_ago=3)
        assert grade()["grade"] == "1-star"  # two stars allow no disconnection
        _disconnection(world, days_ago=2)
        assert grade()["grade"] == "ordinary"


def test_grading_thresholds_that_loosen_a_higher_grade_are_refused_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    looser = {**SMALL_SITE, "3": {**SMALL_SITE["3"], "min_annual_kwh": 1}}
    monkeypatch.setenv("GRIDVEND_GRADING_THRESHOLDS", json.dumps(looser))
    with pytest.raises(ValidationError, match="looser"):
        Settings()
    monkeypatch.setenv("GRIDVEND_GRADING_THRESHOLDS", json.dumps({"7": SMALL_SITE["1"]}))
    with pytest.raises(ValidationError, match="grading thresholds"):
        Settings()
    monkeypatch.delenv("GRIDVEND_GRADING_THRESHOLDS")
    assert Settings().grading_policy().thresholds[Grade.ONE_STAR].min_annual_kwh == 50_000
