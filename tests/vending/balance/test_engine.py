"""The balance engine over a real database: rating, ledger, alerts and supply decisions.

The consumption stream is fed from a list here (the head-end's stream is the source in
production and in the end-to-end test); commands are recorded as the head-end's queue
would receive them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from headend.models import PrepaidMode
from tests.vending.factories import residential_stepped
from tests.vending.world import VendingWorld, add_metered_customer, build_world, drn
from vending.accounts import open_link, save_tariff
from vending.balance.alerts import days_left, days_left_crossed
from vending.balance.engine import (
    BalanceEngine,
    EngineSettings,
    balance_minor,
    take_emergency_credit,
)
from vending.balance.policy import DisconnectPolicy
from vending.counter import PaymentMethod, VendRequest, vend
from vending.models import (
    Account,
    BalanceDecision,
    CentralAccountState,
    Customer,
    HeldConsumption,
    LedgerEntry,
    Notification,
    Vend,
)
from vending.tariff_documents import TariffDocument

# Tuesday 24 November 2026, 10:00 in Johannesburg (UTC+2): outside friendly hours.
MORNING = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
POLICY = DisconnectPolicy(
    timezone="Africa/Johannesburg",
    grace_after_exhaustion=timedelta(minutes=30),
    grace_after_conversion=timedelta(0),
)


@dataclass(frozen=True)
class Interval:
    offset: int
    meter_id: int
    quantity: str
    t_start: datetime
    t_end: datetime
    energy_kwh: Decimal
    quality: str
    reason: str


@dataclass
class Stream:
    records: list[Interval] = field(default_factory=list)

    def add(
        self,
        meter_id: int,
        start: datetime,
        kwh: str,
        quality: str = "measured",
        quantity: str = "energy_import_kwh",
    ) -> None:
        self.records.append(
            Interval(
                offset=len(self.records) + 1,
                meter_id=meter_id,
                quantity=quantity,
                t_start=start,
                t_end=start + timedelta(minutes=15),
                energy_kwh=Decimal(kwh),
                quality=quality,
                reason="spike" if quality == "flagged" else "",
            )
        )

    def __call__(self, session: Session, after_offset: int, limit: int) -> list[Interval]:
        return [r for r in self.records if r.offset > after_offset][:limit]


@dataclass
class Commands:
    requested: dict[str, tuple[int, str]] = field(default_factory=dict)

    def request(
        self,
        meter_id: int,
        name: str,
        params: object = None,
        *,
        requested_by: str,
        reason: str,
        idempotency_key: str | None = None,
    ) -> int:
        key = idempotency_key or str(len(self.requested))
        self.requested.setdefault(key, (meter_id, name))
        return list(self.requested).index(key) + 1


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def world(session_factory: sessionmaker[Session]) -> VendingWorld:
    return build_world(session_factory)


def _engine(world: VendingWorld, stream: Stream, commands: Commands, clock: Clock) -> BalanceEngine:
    return BalanceEngine(
        world.session_factory,
        source=stream,
        commands=commands,
        audit=world.audit,
        settings=EngineSettings(policy=POLICY),
        clock=clock,
    )


def _central_customer(world: VendingWorld, serial: int, top_up: str) -> tuple[int, int]:
    """A central-balance customer (no free units, to keep the figures plain) who topped up."""
    add_metered_customer(world, serial, prepaid_mode=PrepaidMode.CENTRAL)
    with world.session_factory() as session, session.begin():
        session.scalars(select(Account).order_by(Account.id)).all()[-1].free_units_eligible = False
    record = _top_up(world, serial, top_up, f"top-up-{serial}", MORNING - timedelta(hours=1))
    return record.account_id, record.meter_id


def _top_up(world: VendingWorld, serial: int, amount: str, reference: str, at: datetime) -> Vend:
    request = VendRequest(
        drn(serial), Decimal(amount), PaymentMethod.CASH, "counter", reference, "clerk.one"
    )
    with world.session_factory() as session, session.begin():
        return vend(
            session, request, security_module=world.security_module, audit=world.audit, now=at
        )


def _balance(world: VendingWorld, account_id: int) -> int:
    with world.session_factory() as session:
        return balance_minor(session, account_id)


def test_consumption_is_rated_into_the_ledger_once_even_when_replayed(
    world: VendingWorld,
) -> None:
    account_id, meter_id = _central_customer(world, 1, "100.00")
    stream, commands, clock = Stream(), Commands(), Clock(MORNING)
    for n in range(4):
        stream.add(meter_id, MORNING - timedelta(hours=1) + n * timedelta(minutes=15), "0.5")
    engine = _engine(world, stream, commands, clock)
    assert engine.run_once().rated == 4
    after_first = _balance(world, account_id)
    assert after_first < 10_000
    # A restart re-reads nothing: the stream position was stored with the charges.
    assert _engine(world, stream, commands, clock).run_once().rated == 0
    assert _balance(world, account_id) == after_first
    with world.session_factory() as session:
        kinds = sorted(session.scalars(select(LedgerEntry.kind)).all())
    assert kinds.count("consumption") == 4


def test_a_re_read_interval_books_only_the_difference(world: VendingWorld) -> None:
    account_id, meter_id = _central_customer(world, 2, "100.00")
    stream, clock = Stream(), Clock(MORNING)
    stream.add(meter_id, MORNING - timedelta(hours=1), "1.0")
    engine = _engine(world, stream, Commands(), clock)
    engine.run_once()
    once = _balance(world, account_id)
    stream.add(meter_id, MORNING - timedelta(hours=1), "2.0")  # the same interval, corrected
    engine.run_once()
    twice = _balance(world, account_id)
    stream.add(meter_id, MORNING - timedelta(minutes=45), "1.0")
    engine.run_once()
    with world.session_factory() as session:
        entries = session.scalars(
            select(LedgerEntry).where(LedgerEntry.kind.in_(("consumption", "adjustment")))
        ).all()
    first_charge = -entries[0].amount_minor
    assert 10_000 - once == first_charge
    assert [e.kind for e in entries] == ["consumption", "adjustment", "consumption"]
    assert once - twice == -entries[1].amount_minor


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ("flagged", "flagged reading"),
        ("negative", "negative consumption"),
        ("unlinked", "not on any account"),
        ("unregistered", "not in the registry"),
        ("tariff gap", "no version in force"),
    ],
)
def test_what_cannot_be_charged_is_held_with_its_reason(
    world: VendingWorld, setup: str, reason: str
) -> None:
    account_id, meter_id = _central_customer(world, 3, "100.00")
    stream = Stream()
    start = MORNING - timedelta(hours=1)
    if setup == "flagged":
        stream.add(meter_id, start, "9.0", quality="flagged")
    elif setup == "negative":
        stream.add(meter_id, start, "-1.0")
    elif setup == "unregistered":
        stream.add(meter_id + 1000, start, "1.0")
    elif setup == "tariff gap":
        later = replace(
            residential_stepped(),
            code="RES-LATER",
            versions=(replace(residential_stepped().versions[0], effective_from=date(2027, 1, 1)),),
        )
        with world.session_factory() as session, session.begin():
            save_tariff(session, TariffDocument.from_tariff(later), actor="test", now=MORNING)
            session.get_one(Account, account_id).tariff_code = later.code
        stream.add(meter_id, start, "1.0")
    else:
        stream.add(meter_id, start - timedelta(days=10), "1.0")  # before the meter was linked
    report = _engine(world, stream, Commands(), Clock(MORNING)).run_once()
    assert report.held == 1
    assert _balance(world, account_id) == 10_000
    with world.session_factory() as session:
        held = session.scalars(select(HeldConsumption)).one()
    assert reason in held.reason


def _exhaust(world: VendingWorld, serial: int) -> tuple[int, int, Stream]:
    account_id, meter_id = _central_customer(world, serial, "20.00")
    stream = Stream()
    stream.add(meter_id, MORNING - timedelta(minutes=30), "40.0")  # far more than R20 buys
    return account_id, meter_id, stream


def test_an_exhausted_account_is_disconnected_after_the_grace_and_reconnected_on_top_up(
    world: VendingWorld,
) -> None:
    account_id, meter_id, stream = _exhaust(world, 4)
    commands, clock = Commands(), Clock(MORNING)
    engine = _engine(world, stream, commands, clock)
    engine.run_once()
    assert _balance(world, account_id) <= 0
    assert commands.requested == {}  # grace period first

    clock.now = MORNING + timedelta(minutes=31)
    report = engine.run_once()
    assert list(commands.requested.values()) == [(meter_id, "disconnect")]
    assert len(report.decisions) == 1

    # A top-up in the evening (friendly hours): reconnection is not held back.
    evening = datetime(2026, 11, 24, 18, 0, tzinfo=UTC)
    _top_up(world, 4, "200.00", "evening-top-up", evening)
    clock.now = evening
    engine.run_once()
    assert list(commands.requested.values()) == [(meter_id, "disconnect"), (meter_id, "connect")]
    with world.session_factory() as session:
        actions = session.scalars(select(BalanceDecision.action)).all()
        kinds = set(session.scalars(select(Notification.kind)).all())
    assert actions == ["defer", "disconnect", "reconnect"]
    assert {"low_balance_0", "disconnect", "reconnect"} <= kinds


def test_no_disconnection_in_friendly_hours(world: VendingWorld) -> None:
    _, _, stream = _exhaust(world, 5)
    evening = datetime(2026, 11, 24, 17, 0, tzinfo=UTC)  # 19:00 local
    commands = Commands()
    _engine(world, stream, commands, Clock(evening)).run_once()
    _engine(world, stream, commands, Clock(evening + timedelta(hours=1))).run_once()
    assert commands.requested == {}
    with world.session_factory() as session:
        decision = session.scalars(select(BalanceDecision)).all()[-1]
    assert decision.action == "defer"
    assert "friendly hours" in decision.reason


def test_a_protected_customer_is_listed_for_an_operator_not_disconnected(
    world: VendingWorld,
) -> None:
    account_id, _, stream = _exhaust(world, 6)
    with world.session_factory() as session, session.begin():
        account = session.get_one(Account, account_id)
        session.get_one(Customer, account.customer_id).protection = "life_support"
    commands = Commands()
    _engine(world, stream, commands, Clock(MORNING + timedelta(hours=2))).run_once()
    assert commands.requested == {}
    with world.session_factory() as session:
        decision = session.scalars(select(BalanceDecision)).one()
    assert decision.action == "operator_list"


def test_emergency_credit_is_repaid_first_from_the_next_top_up(world: VendingWorld) -> None:
    account_id, meter_id, stream = _exhaust(world, 7)
    engine = _engine(world, stream, Commands(), Clock(MORNING))
    engine.run_once()
    exhausted = _balance(world, account_id)
    with world.session_factory() as session, session.begin():
        take_emergency_credit(session, account_id, 5_000, actor="clerk.one", now=MORNING)
    assert _balance(world, account_id) == exhausted + 5_000
    _top_up(world, 7, "100.00", "after-emergency", MORNING + timedelta(minutes=5))
    engine.run_once()
    assert _balance(world, account_id) == exhausted + 5_000 + 10_000 - 5_000
    with world.session_factory() as session:
        assert open_link(session, meter_id) is not None
        repaid = session.scalars(
            select(LedgerEntry.amount_minor).where(LedgerEntry.kind == "emergency_repayment")
        ).all()
    assert repaid == [-5_000]


def test_exported_energy_is_not_charged(world: VendingWorld) -> None:
    account_id, meter_id = _central_customer(world, 8, "100.00")
    stream = Stream()
    stream.add(meter_id, MORNING - timedelta(hours=1), "3.0", quantity="energy_export_kwh")
    report = _engine(world, stream, Commands(), Clock(MORNING)).run_once()
    assert (report.rated, report.held, report.skipped) == (0, 0, 1)
    assert _balance(world, account_id) == 10_000


def test_a_held_correction_of_a_charged_interval_gives_the_charge_back(
    world: VendingWorld,
) -> None:
    account_id, meter_id = _central_customer(world, 9, "100.00")
    stream, clock = Stream(), Clock(MORNING)
    start = MORNING - timedelta(hours=1)
    stream.add(meter_id, start, "2.0")
    engine = _engine(world, stream, Commands(), clock)
    engine.run_once()
    assert _balance(world, account_id) < 10_000
    stream.add(meter_id, start, "0.0", quality="flagged")  # the head-end withdrew it
    assert engine.run_once().held == 1
    assert _balance(world, account_id) == 10_000
    stream.add(meter_id, start, "1.0")  # confirmed later at another value: charged again
    engine.run_once()
    with world.session_factory() as session:
        kinds = session.scalars(select(LedgerEntry.kind).order_by(LedgerEntry.id)).all()
    assert kinds[-3:] == ["consumption", "adjustment", "adjustment"]
    assert 10_000 - _balance(world, account_id) > 0


@dataclass
class RefusingCommands(Commands):
    """The head-end's queue refusing one meter for good (it cannot command it)."""

    refused_meter: int = 0

    def request(
        self,
        meter_id: int,
        name: str,
        params: object = None,
        *,
        requested_by: str,
        reason: str,
        idempotency_key: str | None = None,
    ) -> int:
        if meter_id == self.refused_meter:
            error = ValueError("meter 1 is on Modbus; commands go over MQTT")
            error.code = "unsupported_transport"  # type: ignore[attr-defined]
            raise error
        return super().request(
            meter_id,
            name,
            params,
            requested_by=requested_by,
            reason=reason,
            idempotency_key=idempotency_key,
        )


def test_a_refused_command_is_kept_on_its_decision_and_the_others_still_go_out(
    world: VendingWorld,
) -> None:
    first_account, first_meter, stream = _exhaust(world, 10)
    second_account, second_meter, second = _exhaust(world, 11)
    stream.records += [replace(r, offset=r.offset + 1) for r in second.records]
    commands, clock = RefusingCommands(refused_meter=first_meter), Clock(MORNING)
    engine = _engine(world, stream, commands, clock)
    engine.run_once()  # both exhausted: the grace period starts
    clock.now += timedelta(minutes=31)
    engine.run_once()
    assert list(commands.requested.values()) == [(second_meter, "disconnect")]
    engine.run_once()  # the refusal is not retried every round
    with world.session_factory() as session:
        decisions = {
            d.account_id: d
            for d in session.scalars(select(BalanceDecision).order_by(BalanceDecision.id))
        }
    assert decisions[first_account].command_id is None
    assert decisions[first_account].command_error == (
        "unsupported_transport: meter 1 is on Modbus; commands go over MQTT"
    )
    assert decisions[second_account].command_id is not None


def test_a_payment_that_commits_after_a_later_one_is_still_taken_into_account(
    world: VendingWorld,
) -> None:
    # Ids are handed out at insert, commits come in any order (PostgreSQL): a payment may
    # become visible after one with a higher id was already taken into account.
    early_account, _ = _central_customer(world, 12, "10.00")
    late_account, _ = _central_customer(world, 13, "10.00")
    engine = _engine(world, Stream(), Commands(), Clock(MORNING))
    engine.run_once()
    with world.session_factory() as session, session.begin():
        high = session.scalar(select(func.max(LedgerEntry.id))) or 0
        session.add(
            LedgerEntry(
                id=high + 100,
                account_id=early_account,
                kind="payment",
                amount_minor=2_000,
                reference="vend:late-high",
                detail={},
                created_at=MORNING,
            )
        )
    engine.run_once()
    with world.session_factory() as session, session.begin():
        session.add(
            LedgerEntry(
                id=high + 50,
                account_id=late_account,
                kind="payment",
                amount_minor=3_000,
                reference="vend:late-low",
                detail={},
                created_at=MORNING,
            )
        )
    engine.run_once()
    with world.session_factory() as session:
        early = session.get_one(CentralAccountState, early_account)
        late = session.get_one(CentralAccountState, late_account)
    assert (early.last_top_up_minor, early.payments_taken_through) == (2_000, high + 100)
    assert (late.last_top_up_minor, late.payments_taken_through) == (3_000, high + 50)


def test_a_days_left_alert_is_sent_once_when_recent_use_would_exhaust_the_balance_soon(
    world: VendingWorld,
) -> None:
    account_id, meter_id = _central_customer(world, 14, "100.00")
    stream, clock = Stream(), Clock(MORNING)
    stream.add(meter_id, MORNING - timedelta(hours=1), "2.0")
    engine = BalanceEngine(
        world.session_factory,
        source=stream,
        commands=Commands(),
        audit=world.audit,
        settings=EngineSettings(policy=POLICY, thresholds_percent=(), thresholds_days_left=(7, 3)),
        clock=clock,
    )
    engine.run_once()
    spent = 10_000 - _balance(world, account_id)
    # R100 less one charge, spent at that charge per 6 hours (the shortest span counted).
    expected = days_left(_balance(world, account_id), spent, timedelta(hours=6))
    assert expected is not None and 3 < expected <= 7
    stream.add(meter_id, MORNING - timedelta(minutes=45), "0.1")
    clock.now += timedelta(minutes=15)
    engine.run_once()
    with world.session_factory() as session:
        sent = session.scalars(
            select(Notification.kind).where(Notification.account_id == account_id)
        ).all()
    assert sent == ["low_balance_7_days"]


def test_days_left_is_the_balance_over_the_recent_spending_rate() -> None:
    assert days_left(10_000, 2_000, timedelta(days=1)) == 5
    assert days_left(10_000, 2_000, timedelta(hours=12)) == Decimal("2.5")
    assert days_left(-5, 2_000, timedelta(days=1)) == 0
    assert days_left(10_000, 0, timedelta(days=1)) is None
    assert days_left_crossed(Decimal("2.5"), {7}, (7, 3, 1)) == [3]
    assert days_left_crossed(None, set(), (7,)) == []
    with pytest.raises(ValueError, match="positive"):
        days_left(1, 1, timedelta(0))


def test_a_correction_in_the_same_round_as_its_interval_books_only_the_difference(
    world: VendingWorld,
) -> None:
    account_id, meter_id = _central_customer(world, 15, "100.00")
    stream = Stream()
    stream.add(meter_id, MORNING - timedelta(hours=1), "1.0")
    stream.add(meter_id, MORNING - timedelta(hours=1), "2.0")
    assert _engine(world, stream, Commands(), Clock(MORNING)).run_once().rated == 2
    with world.session_factory() as session:
        entries = session.scalars(
            select(LedgerEntry.kind)
            .where(LedgerEntry.account_id == account_id)
            .order_by(LedgerEntry.id)
        ).all()
    assert entries == ["payment", "consumption", "adjustment"]
    charged_in_one_round = 10_000 - _balance(world, account_id)
    other_account, other_meter = _central_customer(world, 16, "100.00")
    stream.add(other_meter, MORNING - timedelta(hours=1), "2.0")  # rated once, directly
    _engine(world, stream, Commands(), Clock(MORNING)).run_once()
    assert 10_000 - _balance(world, other_account) == charged_in_one_round
