"""Emergency credit through the API: lent once to a low central balance, audited, repaid
first from the next top-up; every refusal has its code and stores nothing."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from gridvend.audit import AuditEntry
from tests.vending.balance.operator_world import (
    EMERGENCY_CREDIT_MINOR,
    MORNING,
    BalanceWorld,
    make_balance_world,
)
from vending.balance.emergency import grant_emergency_credit
from vending.models import Account, CentralAccountState, LedgerEntry


@pytest.fixture
def world(session_factory: sessionmaker[Session]) -> Iterator[BalanceWorld]:
    yield from make_balance_world(session_factory)


def _stored(world: BalanceWorld) -> tuple[int, int, list[int]]:
    """Ledger rows, audit rows and every account's outstanding emergency credit."""
    with world.session_factory() as session:
        return (
            session.scalar(select(func.count()).select_from(LedgerEntry)) or 0,
            session.scalar(select(func.count()).select_from(AuditEntry)) or 0,
            list(session.scalars(select(CentralAccountState.emergency_credit_outstanding_minor))),
        )


def test_a_clerk_lends_emergency_credit_to_an_exhausted_account(world: BalanceWorld) -> None:
    number = world.central_customer(1, "20.00")
    world.exhaust(number)
    before = world.get(f"/accounts/{number}/balance", "clerk").json()["balance"]

    answer = world.post(f"/accounts/{number}/emergency-credit", "clerk")

    assert answer.status_code == 201, answer.text
    granted = answer.json()
    assert granted["amount"] == "50.00"
    assert granted["ledger_entry"]["kind"] == "emergency_credit"
    view = world.get(f"/accounts/{number}/balance", "clerk").json()
    assert view["balance"] == granted["balance"]
    assert Decimal(view["balance"]) == Decimal(before) + Decimal("50.00")
    assert view["emergency_credit_outstanding"] == "50.00"
    assert world.audited("balance.emergency_credit") == 1


def test_a_second_request_while_outstanding_is_refused_and_stores_nothing(
    world: BalanceWorld,
) -> None:
    number = world.central_customer(2, "20.00")
    world.exhaust(number)
    assert world.post(f"/accounts/{number}/emergency-credit", "supervisor").status_code == 201
    stored = _stored(world)

    again = world.post(f"/accounts/{number}/emergency-credit", "clerk")

    assert again.status_code == 409
    assert again.json()["detail"]["code"] == "emergency_credit_outstanding"
    assert _stored(world) == stored


def test_the_next_top_up_repays_the_emergency_credit_first(world: BalanceWorld) -> None:
    number = world.central_customer(3, "20.00")
    world.exhaust(number)
    world.post(f"/accounts/{number}/emergency-credit", "clerk")
    world.top_up(3, "100.00", "after-emergency", MORNING + timedelta(minutes=5))
    world.run_engine(MORNING + timedelta(minutes=6))

    view = world.get(f"/accounts/{number}/balance", "clerk").json()
    assert view["emergency_credit_outstanding"] == "0.00"
    kinds = [e["kind"] for e in world.get(f"/accounts/{number}/ledger", "clerk").json()["entries"]]
    assert kinds[:3] == ["emergency_repayment", "payment", "emergency_credit"]


@pytest.mark.parametrize(
    ("case", "code", "http"),
    [
        ("in_credit", "balance_not_low", 409),
        ("token_meter", "not_central_balance", 409),
        ("unknown", "account_not_found", 404),
    ],
)
def test_refusals_answer_their_code_and_store_nothing(
    world: BalanceWorld, case: str, code: str, http: int
) -> None:
    if case == "in_credit":
        number = world.central_customer(4, "200.00")
    elif case == "token_meter":
        number = world.token_customer(5)
    else:
        number = "NO-SUCH-ACCOUNT"
    stored = _stored(world)
    answer = world.post(f"/accounts/{number}/emergency-credit", "clerk")
    assert answer.status_code == http, answer.text
    assert answer.json()["detail"]["code"] == code
    assert _stored(world) == stored


@pytest.mark.parametrize("role", ["technician", "admin"])
def test_only_clerks_and_supervisors_may_lend(world: BalanceWorld, role: str) -> None:
    number = world.central_customer(6, "20.00")
    world.exhaust(number)
    answer = world.post(f"/accounts/{number}/emergency-credit", role)
    assert answer.status_code == 403


def test_emergency_credit_not_configured_is_refused(session_factory: sessionmaker[Session]) -> None:
    for world in make_balance_world(session_factory, emergency_credit_minor=0):
        number = world.central_customer(7, "20.00")
        world.exhaust(number)
        answer = world.post(f"/accounts/{number}/emergency-credit", "clerk")
        assert answer.status_code == 409
        assert answer.json()["detail"]["code"] == "emergency_credit_disabled"
        assert world.audited("balance.emergency_credit") == 0


def test_emergency_credit_reconnects_a_disconnected_supply(world: BalanceWorld) -> None:
    number = world.central_customer(8, "20.00")
    # Just past the top-up (R20 buys under 10 kWh), so R50 of credit brings it back above 0.
    world.stream.add(world.meter_id(number), MORNING - timedelta(minutes=30), "12.0")
    world.run_engine(MORNING)
    world.run_engine(MORNING + timedelta(minutes=31))
    assert world.get(f"/accounts/{number}/balance", "clerk").json()["supply_as_decided"] == (
        "disconnected"
    )

    assert world.post(f"/accounts/{number}/emergency-credit", "clerk").status_code == 201
    world.run_engine(MORNING + timedelta(minutes=40))

    view = world.get(f"/accounts/{number}/balance", "clerk").json()
    assert view["supply_as_decided"] == "connected"
    assert view["decisions"][0]["action"] == "reconnect"
    assert view["decisions"][0]["command"]["name"] == "connect"


def test_two_requests_at_once_lend_once(world: BalanceWorld) -> None:
    number = world.central_customer(9, "20.00")
    world.exhaust(number)
    barrier = threading.Barrier(2)

    def ask(role: str) -> int:
        with TestClient(world.client.app) as client:
            barrier.wait()
            answer = client.post(
                f"/api/vending/accounts/{number}/emergency-credit", headers=world.headers[role]
            )
            return int(answer.status_code)

    with ThreadPoolExecutor(max_workers=2) as pool:
        statuses = sorted(pool.map(ask, ["clerk", "supervisor"]))

    assert statuses == [201, 409]
    with world.session_factory() as session:
        lent = session.scalars(
            select(LedgerEntry.amount_minor).where(LedgerEntry.kind == "emergency_credit")
        ).all()
    assert lent == [EMERGENCY_CREDIT_MINOR]
    assert world.audited("balance.emergency_credit") == 1


def test_the_engine_decides_on_a_loan_granted_while_it_waited(world: BalanceWorld) -> None:
    """The engine reads an account under the row lock a loan is granted under: a loan that
    commits while the engine's round waits is in the balance it decides on, so the
    customer is not disconnected over credit they were just given."""
    number = world.central_customer(10, "20.00")
    world.stream.add(world.meter_id(number), MORNING - timedelta(minutes=30), "12.0")
    world.run_engine(MORNING)  # exhausted; disconnect due after the 30-minute grace
    failures: list[BaseException] = []

    def engine_round() -> None:
        try:
            world.run_engine(MORNING + timedelta(minutes=31))
        except BaseException as error:  # surfaced by the assertion below
            failures.append(error)

    with world.session_factory() as session, session.begin():
        account = session.scalars(select(Account).where(Account.account_number == number)).one()
        grant_emergency_credit(
            session,
            account,
            EMERGENCY_CREDIT_MINOR,
            actor="clerk.one",
            now=MORNING + timedelta(minutes=30),
            audit=world.vending.audit,
        )
        waiting = threading.Thread(target=engine_round)
        waiting.start()
        waiting.join(timeout=0.5)  # the round reaches the account's lock and waits
    waiting.join()

    assert failures == []
    view = world.get(f"/accounts/{number}/balance", "clerk").json()
    assert Decimal(view["balance"]) > 0
    assert view["supply_as_decided"] == "connected"
    assert "disconnect" not in [d["action"] for d in view["decisions"]]
