"""The vend transaction against a real database, key store and STS meter."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from headend.models import PrepaidMode
from protocols.sts import TokenStatus, meter_state_for, process_token
from tests.vending.world import (
    VendingWorld,
    add_metered_customer,
    add_vending_point,
    build_world,
    drn,
)
from vending.counter import PaymentMethod, VendRequest, lock_for_vend, vend
from vending.errors import VendingError
from vending.models import Account, LedgerEntry, MeterTidCursor, Vend

NOW = datetime(2026, 11, 24, 9, 30, tzinfo=UTC)


@pytest.fixture
def world(session_factory: sessionmaker[Session]) -> VendingWorld:
    return build_world(session_factory)


def _vend(
    world: VendingWorld,
    meter_number: str,
    amount: str,
    reference: str,
    now: datetime = NOW,
    **extra: object,
) -> Vend:
    request = VendRequest(
        meter_number=meter_number,
        amount=Decimal(amount),
        payment_method=PaymentMethod.CASH,
        channel="counter",
        reference=reference,
        operator="clerk.one",
        **extra,  # type: ignore[arg-type]
    )
    with world.session_factory() as session, session.begin():
        return vend(
            session,
            request,
            security_module=world.security_module,
            audit=world.audit,
            now=now,
        )


def _count(world: VendingWorld, model: type) -> int:
    with world.session_factory() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_a_vended_token_is_accepted_by_the_meter_and_credits_the_receipted_units(
    world: VendingWorld,
) -> None:
    meter_number = add_metered_customer(world, 1)
    record = _vend(world, meter_number, "200.00", "r-1")
    assert record.token_digits is not None
    assert record.units_kwh > 0
    breakdown = record.breakdown
    parts = [Decimal(breakdown[k]) for k in ("debt_recovered", "fixed", "energy", "levies", "tax")]
    assert sum(parts) + Decimal(breakdown["carry_out"]) == Decimal("200.00") + Decimal(
        breakdown["carry_in"]
    )

    meter = meter_state_for(world.key_config, world.meter_pan(meter_number))
    result = process_token(meter, record.token_digits, NOW)
    assert result.status is TokenStatus.ACCEPT
    assert Decimal(result.state.credit[0]) / 10 == record.units_kwh


def test_a_retry_with_the_same_reference_returns_the_same_vend(world: VendingWorld) -> None:
    meter_number = add_metered_customer(world, 2)
    first = _vend(world, meter_number, "50.00", "r-2")
    again = _vend(world, meter_number, "50.00", "r-2", now=NOW + timedelta(minutes=1))
    assert (again.id, again.token_digits) == (first.id, first.token_digits)
    assert _count(world, Vend) == 1


def test_the_same_reference_with_another_amount_is_a_conflict(world: VendingWorld) -> None:
    meter_number = add_metered_customer(world, 3)
    _vend(world, meter_number, "50.00", "r-3")
    with pytest.raises(VendingError) as error:
        _vend(world, meter_number, "60.00", "r-3")
    assert error.value.code == "reference_conflict"


def test_successive_vends_get_increasing_tids_and_the_meter_accepts_each(
    world: VendingWorld,
) -> None:
    meter_number = add_metered_customer(world, 4)
    records = [_vend(world, meter_number, "30.00", f"r-4-{n}") for n in range(3)]
    tids = [r.tid for r in records]
    assert tids == sorted(set(tids))  # type: ignore[type-var]
    meter = meter_state_for(world.key_config, world.meter_pan(meter_number))
    for record in records:
        result = process_token(meter, record.token_digits or "", NOW)
        assert result.status is TokenStatus.ACCEPT
        meter = result.state


def test_concurrent_vends_on_one_meter_never_share_a_tid(world: VendingWorld) -> None:
    meter_number = add_metered_customer(world, 5)
    errors: list[BaseException] = []

    def sell(n: int) -> None:
        try:
            _vend(world, meter_number, "20.00", f"r-5-{n}")
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=sell, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with world.session_factory() as session:
        tids = session.scalars(select(Vend.tid)).all()
        tokens = session.scalars(select(Vend.token_digits)).all()
        cursor = session.scalars(select(MeterTidCursor)).one()
    assert len(set(tids)) == len(tids) == 8
    assert len(set(tokens)) == 8
    assert cursor.last_tid == max(t for t in tids if t is not None)


@pytest.mark.parametrize(
    ("meter_number", "amount", "code"),
    [
        (drn(99_999), "50.00", "meter_not_found"),
        ("12345", "50.00", "invalid_meter_number"),
        (None, "0.01", "amount_below_minimum"),
        (None, "-5", "invalid_amount"),
        (None, "50.001", "invalid_amount"),
        (None, "99999999", "amount_above_maximum"),
    ],
)
def test_bad_vend_requests_are_refused_with_their_code_and_change_nothing(
    world: VendingWorld, meter_number: str | None, amount: str, code: str
) -> None:
    own_meter = add_metered_customer(world, 6)
    with world.session_factory() as session:
        before = session.execute(select(Account.debt_minor, Account.carry_over_minor)).all()
    with pytest.raises(VendingError) as error:
        _vend(world, meter_number or own_meter, amount, "r-6")
    assert error.value.code == code
    assert _count(world, Vend) == 0
    assert _count(world, MeterTidCursor) == 0
    with world.session_factory() as session:
        assert session.execute(select(Account.debt_minor, Account.carry_over_minor)).all() == before


def test_a_vending_point_over_its_credit_limit_stops_vending(world: VendingWorld) -> None:
    meter_number = add_metered_customer(world, 7)
    point_id = add_vending_point(world, "P1", credit_limit_minor=10_000)
    _vend(world, meter_number, "80.00", "r-7-1", vending_point_id=point_id)
    with pytest.raises(VendingError) as error:
        _vend(world, meter_number, "30.00", "r-7-2", vending_point_id=point_id)
    assert error.value.code == "vending_point_limit"
    assert _count(world, Vend) == 1


def test_debt_is_recovered_by_the_account_rule_and_never_beyond_it(world: VendingWorld) -> None:
    meter_number = add_metered_customer(world, 8, debt=Decimal("100.00"))
    with world.session_factory() as session, session.begin():
        account = session.scalars(select(Account)).one()
        account.debt_recovery = {"percent_of_purchase": "25"}
    record = _vend(world, meter_number, "100.00", "r-8")
    assert Decimal(record.breakdown["debt_recovered"]) == Decimal("25.00")
    with world.session_factory() as session:
        assert session.scalars(select(Account.debt_minor)).one() == 7_500


def test_a_central_balance_meter_gets_a_ledger_credit_instead_of_a_token(
    world: VendingWorld,
) -> None:
    meter_number = add_metered_customer(world, 9, prepaid_mode=PrepaidMode.CENTRAL)
    record = _vend(world, meter_number, "100.00", "r-9")
    assert record.token_digits is None
    with world.session_factory() as session:
        entry = session.scalars(select(LedgerEntry)).one()
    assert (entry.kind, entry.amount_minor) == ("payment", 10_000)


def test_the_vend_lock_gives_the_account_the_session_holds_as_the_row_now_says(
    world: VendingWorld,
) -> None:
    meter_number = add_metered_customer(world, 1)
    with world.session_factory() as session, session.begin():
        held = session.scalar(select(Account))
        assert held is not None
        held.debt_minor = 12345  # changed in memory, never written
        locked = lock_for_vend(session, meter_number)
        assert locked.account is held
        assert held.debt_minor == 0
        assert not session.is_modified(held)  # the in-memory change is gone, not written


def test_the_vend_lock_loads_the_account_into_the_session(world: VendingWorld) -> None:
    meter_number = add_metered_customer(world, 1)
    with world.session_factory() as session, session.begin():
        locked = lock_for_vend(session, meter_number)
        account = locked.account
        assert account in session and not session.is_modified(account)
        assert session.get(Account, account.id) is account
        stored = session.connection().execute(select(Account.__table__)).one()._asdict()
        assert {name: getattr(account, name) for name in stored} == stored
