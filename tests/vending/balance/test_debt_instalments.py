"""Weekly debt instalments of central-balance accounts, booked by the balance engine."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from headend.models import PrepaidMode
from tests.vending.balance.test_engine import (
    MORNING,
    Clock,
    Commands,
    Stream,
    _engine,
    _top_up,
)
from tests.vending.world import VendingWorld, add_metered_customer, build_world
from vending.balance.engine import balance_minor
from vending.debt import DebtRecoveryRule
from vending.models import Account, LedgerEntry, Notification

WEEK = timedelta(days=7)


@pytest.fixture
def world(session_factory: sessionmaker[Session]) -> VendingWorld:
    return build_world(session_factory)


def _indebted_customer(
    world: VendingWorld,
    serial: int,
    *,
    debt: str,
    weekly_minor: int,
    mode: PrepaidMode = PrepaidMode.CENTRAL,
) -> int:
    add_metered_customer(world, serial, prepaid_mode=mode, debt=Decimal(debt))
    with world.session_factory() as session, session.begin():
        account = session.scalars(select(Account).order_by(Account.id)).all()[-1]
        account.debt_recovery = DebtRecoveryRule(weekly_instalment_minor=weekly_minor).to_document()
        account_id = account.id
    if mode is PrepaidMode.CENTRAL:
        _top_up(world, serial, "100.00", f"top-up-{serial}", MORNING - timedelta(hours=1))
    return account_id


def _instalments(world: VendingWorld, account_id: int) -> list[int]:
    with world.session_factory() as session:
        return list(
            session.scalars(
                select(LedgerEntry.amount_minor)
                .where(LedgerEntry.account_id == account_id, LedgerEntry.kind == "debt_recovery")
                .order_by(LedgerEntry.id)
            )
        )


def _debt(world: VendingWorld, account_id: int) -> int:
    with world.session_factory() as session:
        return session.get_one(Account, account_id).debt_minor


def _ledger_total_by_kind(world: VendingWorld, account_id: int) -> dict[str, int]:
    totals: dict[str, int] = {}
    with world.session_factory() as session:
        for entry in session.scalars(
            select(LedgerEntry).where(LedgerEntry.account_id == account_id)
        ):
            totals[entry.kind] = totals.get(entry.kind, 0) + entry.amount_minor
    return totals


def test_one_instalment_per_full_week_never_more_than_the_debt(world: VendingWorld) -> None:
    account_id = _indebted_customer(world, 31, debt="100.00", weekly_minor=3_000)
    clock = Clock(MORNING)
    engine = _engine(world, Stream(), Commands(), clock)
    engine.run_once()  # the schedule starts now
    clock.now = MORNING + WEEK - timedelta(minutes=1)
    engine.run_once()
    assert _instalments(world, account_id) == []

    clock.now = MORNING + WEEK
    engine.run_once()
    assert _instalments(world, account_id) == [-3_000]
    assert _debt(world, account_id) == 7_000

    clock.now = MORNING + 3 * WEEK + timedelta(days=2)  # two more full weeks
    engine.run_once()
    assert _instalments(world, account_id) == [-3_000, -3_000, -3_000]

    clock.now = MORNING + 10 * WEEK
    engine.run_once()
    assert _instalments(world, account_id) == [-3_000, -3_000, -3_000, -1_000]
    assert _debt(world, account_id) == 0

    clock.now = MORNING + 20 * WEEK
    engine.run_once()
    assert len(_instalments(world, account_id)) == 4
    totals = _ledger_total_by_kind(world, account_id)
    assert totals["debt_recovery"] == -10_000
    with world.session_factory() as session:
        assert balance_minor(session, account_id) == sum(totals.values())


def test_a_crash_mid_round_and_a_restart_book_each_week_once(world: VendingWorld) -> None:
    account_id = _indebted_customer(world, 32, debt="500.00", weekly_minor=2_500)
    clock = Clock(MORNING)
    _engine(world, Stream(), Commands(), clock).run_once()

    clock.now = MORNING + 2 * WEEK + timedelta(hours=3)
    crashing = _engine(world, Stream(), Commands(), clock)

    def crash(*args: object) -> None:
        raise RuntimeError("power cut")

    crashing._evaluate = crash  # type: ignore[method-assign]  # dies after booking, before commit
    with pytest.raises(RuntimeError):
        crashing.run_once()
    assert _instalments(world, account_id) == []
    assert _debt(world, account_id) == 50_000

    restarted = _engine(world, Stream(), Commands(), clock)
    restarted.run_once()
    restarted.run_once()
    _engine(world, Stream(), Commands(), clock).run_once()  # and another restart
    assert _instalments(world, account_id) == [-2_500, -2_500]
    assert _debt(world, account_id) == 45_000
    totals = _ledger_total_by_kind(world, account_id)
    with world.session_factory() as session:
        assert balance_minor(session, account_id) == sum(totals.values())


def test_a_token_meter_account_pays_arrears_from_purchases_only(world: VendingWorld) -> None:
    account_id = _indebted_customer(
        world, 33, debt="100.00", weekly_minor=3_000, mode=PrepaidMode.TOKEN
    )
    clock = Clock(MORNING)
    engine = _engine(world, Stream(), Commands(), clock)
    engine.run_once()
    clock.now = MORNING + 5 * WEEK
    engine.run_once()
    assert _instalments(world, account_id) == []
    assert _debt(world, account_id) == 10_000


def test_the_instalment_lowers_the_balance_and_can_trigger_a_low_balance_alert(
    world: VendingWorld,
) -> None:
    account_id = _indebted_customer(world, 34, debt="200.00", weekly_minor=8_000)
    clock = Clock(MORNING)
    engine = _engine(world, Stream(), Commands(), clock)
    engine.run_once()
    with world.session_factory() as session:
        before = balance_minor(session, account_id)
    clock.now = MORNING + WEEK
    engine.run_once()
    with world.session_factory() as session:
        assert balance_minor(session, account_id) == before - 8_000
        kinds = set(
            session.scalars(select(Notification.kind).where(Notification.account_id == account_id))
        )
    assert "low_balance_30" in kinds
