"""``gridvend balance check`` on a real database: a consistent one passes; a ledger row
inserted or a record changed behind the engine's back is reported and exits 1."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from gridvend.cli import app
from tests.vending.balance.operator_world import MORNING, BalanceWorld, make_balance_world
from tests.vending.world import drn
from vending.balance.engine import take_emergency_credit
from vending.counter import PaymentMethod, VendRequest, vend
from vending.models import Account, CentralAccountState, LedgerEntry, RatedInterval
from vending.reversals import reverse_vend

runner = CliRunner()


@pytest.fixture
def world(
    session_factory: sessionmaker[Session], database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[BalanceWorld]:
    monkeypatch.setenv("GRIDVEND_DATABASE_URL", database_url)
    yield from make_balance_world(session_factory)


def _busy_world(world: BalanceWorld) -> str:
    """Two central accounts with rated consumption, a corrected interval, a second top-up
    and emergency credit taken and partly repaid; returns the first account's number."""
    first = world.central_customer(1, "100.00")
    second = world.central_customer(2, "20.00")
    for n in range(4):
        start = MORNING - timedelta(hours=1) + n * timedelta(minutes=15)
        world.stream.add(world.meter_id(first), start, "0.5")
    world.stream.add(world.meter_id(first), MORNING - timedelta(hours=1), "0.9")  # a re-read
    world.stream.add(world.meter_id(second), MORNING - timedelta(minutes=30), "40.0")
    world.run_engine(MORNING)
    with world.session_factory() as session, session.begin():
        account_id = session.scalars(
            select(Account.id).where(Account.account_number == second)
        ).one()
        take_emergency_credit(session, account_id, 5_000, actor="test", now=MORNING)
    world.top_up(2, "30.00", "second-top-up", MORNING + timedelta(minutes=5))
    world.run_engine(MORNING + timedelta(minutes=6))
    return first


def _account_id(world: BalanceWorld, number: str) -> int:
    with world.session_factory() as session:
        return session.scalars(select(Account.id).where(Account.account_number == number)).one()


def test_a_consistent_database_passes(world: BalanceWorld) -> None:
    _busy_world(world)
    result = runner.invoke(app, ["balance", "check", "--all"])
    assert result.exit_code == 0, result.output
    assert "all 2 central accounts match their ledgers" in result.output
    assert "Central balance check" in result.output


def test_a_reversed_central_top_up_still_matches(world: BalanceWorld) -> None:
    _busy_world(world)
    with world.session_factory() as session, session.begin():
        made = vend(
            session,
            VendRequest(
                drn(1), Decimal("40.00"), PaymentMethod.CASH, "counter", "to-reverse", "clerk"
            ),
            security_module=world.vending.security_module,
            audit=world.vending.audit,
            now=MORNING + timedelta(minutes=10),
            reversible_here=True,
        )
    with world.session_factory() as session, session.begin():
        reverse_vend(
            session,
            made.receipt_number,
            reason="paid for the wrong account",
            actor="supervisor",
            now=MORNING + timedelta(minutes=11),
        )
    result = runner.invoke(app, ["balance", "check"])
    assert result.exit_code == 0, result.output


def test_an_empty_database_passes(world: BalanceWorld) -> None:
    result = runner.invoke(app, ["balance", "check"])
    assert result.exit_code == 0, result.output
    assert "all 0 central accounts match" in result.output


def test_a_payment_row_inserted_without_a_vend_is_reported(world: BalanceWorld) -> None:
    number = _busy_world(world)
    with world.session_factory() as session, session.begin():
        session.add(
            LedgerEntry(
                account_id=_account_id(world, number),
                kind="payment",
                amount_minor=50_000,
                reference="vend:999999",
                detail={},
                created_at=MORNING,
            )
        )
    result = runner.invoke(app, ["balance", "check"])
    assert result.exit_code == 1
    assert "payment vend:999999" in result.output and "has no vend" in result.output
    assert "1 of 2 central accounts do not match" in result.output


def test_a_consumption_row_without_a_rated_interval_is_reported(world: BalanceWorld) -> None:
    number = _busy_world(world)
    with world.session_factory() as session, session.begin():
        session.add(
            LedgerEntry(
                account_id=_account_id(world, number),
                kind="consumption",
                amount_minor=-1_234,
                reference="interval:888888",
                detail={},
                created_at=MORNING,
            )
        )
    result = runner.invoke(app, ["balance", "check"])
    assert result.exit_code == 1
    assert "interval:888888" in result.output and "no rated interval" in result.output


def test_a_rated_charge_changed_behind_the_ledger_is_reported(world: BalanceWorld) -> None:
    number = _busy_world(world)
    with world.session_factory() as session, session.begin():
        interval_id = session.scalars(
            select(RatedInterval.id)
            .where(RatedInterval.account_id == _account_id(world, number))
            .order_by(RatedInterval.id)
        ).first()
        session.execute(
            update(RatedInterval)
            .where(RatedInterval.id == interval_id)
            .values(charge_minor=RatedInterval.charge_minor + 1)
        )
    result = runner.invoke(app, ["balance", "check"])
    assert result.exit_code == 1
    assert f"rated interval {interval_id} charged" in result.output


def test_emergency_credit_outstanding_that_the_ledger_does_not_show_is_reported(
    world: BalanceWorld,
) -> None:
    _busy_world(world)
    with world.session_factory() as session, session.begin():
        session.execute(update(CentralAccountState).values(emergency_credit_outstanding_minor=7))
    result = runner.invoke(app, ["balance", "check"])
    assert result.exit_code == 1
    assert "emergency credit lent" in result.output
