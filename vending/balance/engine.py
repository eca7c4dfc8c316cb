"""The balance engine: consumption in, ledger entries, alerts and supply decisions out.

One round (``run_once``), each step in one transaction with the stream position it
reached, so a restart repeats nothing and misses nothing:

1. read interval consumption after the stored offset; rate each interval of a
   central-balance meter with the account's tariff in force at that time and book the
   charge (a re-read interval books only the difference, as an adjustment); hold what
   cannot be charged (no account, a tariff gap, flagged or negative consumption) with the
   reason; post each complete local day's fixed charges once;
2. take new payments into account (top-up amount for alerts, emergency credit repaid
   first), announce low-balance thresholds once per crossing, and decide on the supply
   with :mod:`vending.balance.policy`, recording every decision with its reason;
3. after the commit, ask the head-end for the disconnects and reconnects decided, with an
   idempotency key per decision, so a crash between deciding and asking re-asks safely.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Protocol

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from headend.audit import AuditSink
from headend.interface import find_meter
from vending import localtime
from vending.accounts import load_tariff
from vending.balance.alerts import DEFAULT_THRESHOLDS_PERCENT, thresholds_crossed
from vending.balance.policy import AccountSituation, Action, DisconnectPolicy, decide
from vending.errors import VendingError
from vending.models import (
    Account,
    AccountMeter,
    BalanceDecision,
    CentralAccountState,
    Customer,
    EngineCursor,
    HeldConsumption,
    LedgerEntry,
    Notification,
    RatedInterval,
)
from vending.rating import rate_interval
from vending.tariffs import AccountTerms, Tariff, TariffError

log = logging.getLogger(__name__)

CONSUMPTION_CURSOR = "balance-engine:consumption"
LEDGER_CURSOR = "balance-engine:ledger"
ENGINE_ACTOR = "balance-engine"


class ConsumptionRecord(Protocol):
    """One interval of the head-end's consumption stream (``offset`` orders the stream);
    headend.interface.ConsumptionEvent is one."""

    @property
    def offset(self) -> int: ...
    @property
    def meter_id(self) -> int: ...
    @property
    def quantity(self) -> str: ...
    @property
    def t_start(self) -> datetime: ...
    @property
    def t_end(self) -> datetime: ...
    @property
    def energy_kwh(self) -> Decimal: ...
    @property
    def quality(self) -> str: ...
    @property
    def reason(self) -> str: ...


class ConsumptionSource(Protocol):
    def __call__(
        self, session: Session, after_offset: int, limit: int
    ) -> Sequence[ConsumptionRecord]: ...


class CommandRequester(Protocol):
    def request(
        self,
        meter_id: int,
        name: str,
        params: dict[str, object] | None = None,
        *,
        requested_by: str,
        reason: str,
        idempotency_key: str | None = None,
    ) -> int: ...


@dataclass(frozen=True, slots=True)
class EngineSettings:
    policy: DisconnectPolicy
    thresholds_percent: tuple[Decimal, ...] = DEFAULT_THRESHOLDS_PERCENT
    emergency_credit_minor: int = 0
    batch_size: int = 500


@dataclass
class RoundReport:
    rated: int = 0
    held: int = 0
    skipped: int = 0
    decisions: list[int] = field(default_factory=list)
    commands: list[int] = field(default_factory=list)


class BalanceEngine:
    def __init__(
        self,
        session_factory: sessionmaker[Session],
        *,
        source: ConsumptionSource,
        commands: CommandRequester,
        audit: AuditSink,
        settings: EngineSettings,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._session_factory = session_factory
        self._source = source
        self._commands = commands
        self._audit = audit
        self._settings = settings
        self._clock = clock

    async def run(self, interval_s: float = 1.0) -> None:
        """Run rounds until cancelled; a failing round is logged and retried."""
        while True:
            try:
                report = await asyncio.to_thread(self.run_once)
                if report.rated or report.decisions:
                    log.info("balance round: %s", report)
            except Exception:
                log.exception("balance engine round failed; retrying")
            await asyncio.sleep(interval_s)

    def run_once(self) -> RoundReport:
        report = RoundReport()
        now = self._clock()
        with self._session_factory() as session, session.begin():
            touched = self._rate_new_consumption(session, report, now)
            touched |= self._take_new_payments(session, now)
            touched |= self._accounts_waiting(session)
            for account_id in sorted(touched):
                decision_id = self._evaluate(session, account_id, now)
                if decision_id is not None:
                    report.decisions.append(decision_id)
        report.commands = self._request_pending_commands()
        return report

    # --- step 1: rating ------------------------------------------------------------

    def _rate_new_consumption(
        self, session: Session, report: RoundReport, now: datetime
    ) -> set[int]:
        cursor = _cursor(session, CONSUMPTION_CURSOR)
        records = self._source(session, cursor.position, self._settings.batch_size)
        touched: set[int] = set()
        for record in records:
            account_id = self._rate_one(session, record, report, now)
            if account_id is not None:
                touched.add(account_id)
            cursor.position = record.offset
        return touched

    def _rate_one(
        self, session: Session, record: ConsumptionRecord, report: RoundReport, now: datetime
    ) -> int | None:
        meter = find_meter(session, meter_id=record.meter_id)
        if meter is None or meter.prepaid_mode != "central":
            report.skipped += 1  # token meters keep their credit in the meter
            return None
        link = _link_at(session, record.meter_id, record.t_start)
        if link is None:
            self._hold(session, record, report, now, "meter not on any account then")
            return None
        if record.quality == "flagged":
            self._hold(session, record, report, now, f"flagged reading: {record.reason}")
            return None
        if record.energy_kwh < 0:
            self._hold(session, record, report, now, "negative consumption")
            return None
        account = session.get_one(Account, link.account_id)
        try:
            tariff = load_tariff(session, account.tariff_code)
            charged = rate_interval(
                tariff,
                record.t_start,
                record.t_end,
                record.energy_kwh,
                _month_to_date(session, account.id, tariff, record.t_start),
                _terms(account),
                include_fixed=False,
            )
            self._post_fixed_charges(session, account, tariff, record.t_end, now)
        except (TariffError, VendingError, ValueError) as exc:
            self._hold(session, record, report, now, f"cannot rate: {exc}")
            return None
        charge = charged.total.minor
        rated = session.scalar(
            select(RatedInterval).where(
                RatedInterval.meter_id == record.meter_id,
                RatedInterval.quantity == record.quantity,
                RatedInterval.t_start == record.t_start,
            )
        )
        if rated is None:
            rated = RatedInterval(
                account_id=account.id,
                meter_id=record.meter_id,
                quantity=record.quantity,
                t_start=record.t_start,
                t_end=record.t_end,
                energy_kwh=record.energy_kwh,
                charge_minor=charge,
                source_offset=record.offset,
                rated_at=now,
            )
            session.add(rated)
            session.flush()
            _book(
                session,
                account.id,
                "consumption",
                -charge,
                f"interval:{rated.id}",
                now,
                {"kwh": str(record.energy_kwh), "from": record.t_start.isoformat()},
            )
        elif charge != rated.charge_minor or record.energy_kwh != rated.energy_kwh:
            # A re-read interval: book the difference, never overwrite what was charged.
            _book(
                session,
                account.id,
                "adjustment",
                rated.charge_minor - charge,
                f"rerate:{rated.id}:{record.offset}",
                now,
                {"kwh_before": str(rated.energy_kwh), "kwh_after": str(record.energy_kwh)},
            )
            rated.energy_kwh, rated.charge_minor = record.energy_kwh, charge
            rated.source_offset, rated.rated_at = record.offset, now
        report.rated += 1
        return account.id

    def _post_fixed_charges(
        self, session: Session, account: Account, tariff: Tariff, up_to: datetime, now: datetime
    ) -> None:
        """Book each complete local day's fixed charges once, up to the day of ``up_to``."""
        last_complete = localtime.local_date(up_to, tariff.tz) - timedelta(days=1)
        day = (account.fixed_charged_through or last_complete) + timedelta(days=1)
        while day <= last_complete:
            start = localtime.day_start(day, tariff.tz)
            end = localtime.day_start(day + timedelta(days=1), tariff.tz)
            daily = rate_interval(
                tariff, start, end, Decimal(0), Decimal(0), _terms(account), include_fixed=True
            )
            if daily.total.minor:
                _book(
                    session,
                    account.id,
                    "fixed_charge",
                    -daily.total.minor,
                    f"fixed:{day.isoformat()}",
                    now,
                    {"day": day.isoformat()},
                )
            account.fixed_charged_through = day
            day += timedelta(days=1)

    def _hold(
        self,
        session: Session,
        record: ConsumptionRecord,
        report: RoundReport,
        now: datetime,
        reason: str,
    ) -> None:
        session.add(
            HeldConsumption(
                source_offset=record.offset,
                meter_id=record.meter_id,
                t_start=record.t_start,
                t_end=record.t_end,
                energy_kwh=record.energy_kwh,
                reason=reason,
                held_at=now,
            )
        )
        report.held += 1

    # --- step 2: payments, alerts, decisions -----------------------------------------

    def _take_new_payments(self, session: Session, now: datetime) -> set[int]:
        cursor = _cursor(session, LEDGER_CURSOR)
        payments = session.scalars(
            select(LedgerEntry)
            .where(LedgerEntry.id > cursor.position, LedgerEntry.kind == "payment")
            .order_by(LedgerEntry.id)
        ).all()
        last_id = session.scalar(select(func.max(LedgerEntry.id))) or cursor.position
        touched = set()
        for payment in payments:
            state = _state(session, payment.account_id)
            state.last_top_up_minor = payment.amount_minor
            state.last_top_up_at = payment.created_at
            state.alerts_sent = []
            repay = min(state.emergency_credit_outstanding_minor, payment.amount_minor)
            if repay:
                _book(
                    session,
                    payment.account_id,
                    "emergency_repayment",
                    -repay,
                    f"emergency-repayment:{payment.id}",
                    now,
                    {},
                )
                state.emergency_credit_outstanding_minor -= repay
            touched.add(payment.account_id)
        cursor.position = max(cursor.position, last_id)
        return touched

    def _accounts_waiting(self, session: Session) -> set[int]:
        """Accounts whose supply question is open: exhausted and still connected, or
        disconnected with emergency credit taken since (no payment wakes those up)."""
        waiting = set(
            session.scalars(
                select(CentralAccountState.account_id).where(
                    CentralAccountState.exhausted_since.is_not(None),
                    CentralAccountState.supply_requested == "connected",
                )
            )
        )
        waiting.update(
            session.scalars(
                select(CentralAccountState.account_id)
                .join(BalanceDecision, BalanceDecision.id == CentralAccountState.last_decision_id)
                .where(
                    CentralAccountState.supply_requested == "disconnected",
                    CentralAccountState.emergency_credit_taken_at >= BalanceDecision.decided_at,
                )
            )
        )
        return waiting

    def _evaluate(self, session: Session, account_id: int, now: datetime) -> int | None:
        state = _state(session, account_id)
        balance = balance_minor(session, account_id)
        if balance <= 0 and state.exhausted_since is None:
            state.exhausted_since = now
        elif balance > 0:
            state.exhausted_since = None
        self._announce_thresholds(session, state, balance, now)
        customer = session.scalar(
            select(Customer)
            .join(Account, Account.customer_id == Customer.id)
            .where(Account.id == account_id)
        )
        situation = AccountSituation(
            balance_minor=balance,
            exhausted_since=state.exhausted_since,
            converted_at=state.converted_at,
            protection=customer.protection if customer else None,
            supply_connected=state.supply_requested == "connected",
        )
        decision = decide(self._settings.policy, situation, now)
        if decision.action is Action.NONE:
            return None
        previous = (
            session.get(BalanceDecision, state.last_decision_id) if state.last_decision_id else None
        )
        if previous is not None and (previous.action, previous.reason) == (
            decision.action.value,
            decision.reason,
        ):
            return None  # already recorded; nothing new to say
        meter_id = _open_meter(session, account_id)
        record = BalanceDecision(
            account_id=account_id,
            meter_id=meter_id or 0,
            decided_at=now,
            action=decision.action.value,
            reason=decision.reason,
            balance_minor=balance,
            not_before=decision.not_before,
        )
        session.add(record)
        session.flush()
        state.last_decision_id = record.id
        if decision.action is Action.DISCONNECT:
            state.supply_requested = "disconnected"
            _notify(
                session,
                account_id,
                "disconnect",
                "Your supply is being disconnected: your balance is used up. Top up to reconnect.",
                now,
            )
        elif decision.action is Action.RECONNECT:
            state.supply_requested = "connected"
            _notify(session, account_id, "reconnect", "Your supply is being reconnected.", now)
        self._audit.record(
            session,
            actor=ENGINE_ACTOR,
            action=f"supply.{decision.action.value}",
            subject=f"account:{account_id}",
            detail={"reason": decision.reason, "balance_minor": balance, "decision": record.id},
        )
        return record.id

    def _announce_thresholds(
        self, session: Session, state: CentralAccountState, balance: int, now: datetime
    ) -> None:
        sent = {Decimal(p) for p in state.alerts_sent or []}
        crossed = thresholds_crossed(
            balance, state.last_top_up_minor, sent, self._settings.thresholds_percent
        )
        for percent in crossed:
            _notify(
                session,
                state.account_id,
                f"low_balance_{percent}",
                f"Your balance is at or below {percent}% of your last top-up.",
                now,
            )
        if crossed:
            state.alerts_sent = sorted({str(p) for p in sent | set(crossed)})

    # --- step 3: commands --------------------------------------------------------------

    def _request_pending_commands(self) -> list[int]:
        with self._session_factory() as session:
            pending = session.scalars(
                select(BalanceDecision).where(
                    BalanceDecision.action.in_((Action.DISCONNECT.value, Action.RECONNECT.value)),
                    BalanceDecision.command_id.is_(None),
                    BalanceDecision.meter_id != 0,
                )
            ).all()
            wanted = [(d.id, d.meter_id, d.action, d.reason) for d in pending]
        requested = []
        for decision_id, meter_id, action, reason in wanted:
            name = "disconnect" if action == Action.DISCONNECT.value else "connect"
            command_id = self._commands.request(
                meter_id,
                name,
                requested_by=ENGINE_ACTOR,
                reason=reason,
                idempotency_key=f"balance-decision:{decision_id}",
            )
            with self._session_factory() as session, session.begin():
                session.get_one(BalanceDecision, decision_id).command_id = command_id
            requested.append(command_id)
        return requested


# --- the engine's queries and writes ---------------------------------------------------


def balance_minor(session: Session, account_id: int) -> int:
    """The balance: by definition the sum of the account's ledger."""
    total = session.scalar(
        select(func.coalesce(func.sum(LedgerEntry.amount_minor), 0)).where(
            LedgerEntry.account_id == account_id
        )
    )
    return int(total or 0)


def take_emergency_credit(
    session: Session, account_id: int, amount_minor: int, *, actor: str, now: datetime
) -> LedgerEntry:
    """Lend ``amount_minor`` once while the balance is low; repaid first from the next
    top-up. VendingError: emergency_credit_outstanding, balance_not_low, invalid_amount."""
    if amount_minor <= 0:
        raise VendingError("invalid_amount", "emergency credit must be positive")
    state = _state(session, account_id)
    if state.emergency_credit_outstanding_minor:
        raise VendingError(
            "emergency_credit_outstanding", "emergency credit already taken and not repaid"
        )
    balance = balance_minor(session, account_id)
    if balance > state.last_top_up_minor * 10 // 100:
        raise VendingError("balance_not_low", "emergency credit is for a low or exhausted balance")
    state.emergency_credit_outstanding_minor = amount_minor
    state.emergency_credit_taken_at = now
    return _book(
        session,
        account_id,
        "emergency_credit",
        amount_minor,
        f"emergency-credit:{now.isoformat()}",
        now,
        {"by": actor},
    )


def _book(
    session: Session,
    account_id: int,
    kind: str,
    amount_minor: int,
    reference: str,
    now: datetime,
    detail: dict[str, object],
) -> LedgerEntry:
    entry = LedgerEntry(
        account_id=account_id,
        kind=kind,
        amount_minor=amount_minor,
        reference=reference,
        detail=detail,
        created_at=now,
    )
    session.add(entry)
    session.flush()
    return entry


def _notify(session: Session, account_id: int, kind: str, message: str, now: datetime) -> None:
    session.add(Notification(account_id=account_id, kind=kind, message=message, created_at=now))


def _cursor(session: Session, name: str) -> EngineCursor:
    cursor = session.scalar(select(EngineCursor).where(EngineCursor.name == name).with_for_update())
    if cursor is None:
        cursor = EngineCursor(name=name, position=0)
        session.add(cursor)
        session.flush()
    return cursor


def _state(session: Session, account_id: int) -> CentralAccountState:
    state = session.get(CentralAccountState, account_id)
    if state is None:
        account = session.get_one(Account, account_id)
        state = CentralAccountState(
            account_id=account_id,
            converted_at=account.created_at,
            last_top_up_minor=0,
            alerts_sent=[],
            emergency_credit_outstanding_minor=0,
            supply_requested="connected",
        )
        session.add(state)
        session.flush()
    return state


def _link_at(session: Session, meter_id: int, at: datetime) -> AccountMeter | None:
    return session.scalar(
        select(AccountMeter).where(
            AccountMeter.meter_id == meter_id,
            AccountMeter.linked_at <= at,
            (AccountMeter.unlinked_at.is_(None)) | (AccountMeter.unlinked_at > at),
        )
    )


def _open_meter(session: Session, account_id: int) -> int | None:
    return session.scalar(
        select(AccountMeter.meter_id).where(
            AccountMeter.account_id == account_id, AccountMeter.unlinked_at.is_(None)
        )
    )


def _month_to_date(session: Session, account_id: int, tariff: Tariff, before: datetime) -> Decimal:
    wall = localtime.wall_clock(before, tariff.tz)
    month_start = localtime.day_start(date(wall.year, wall.month, 1), tariff.tz)
    total = session.scalar(
        select(func.coalesce(func.sum(RatedInterval.energy_kwh), 0)).where(
            RatedInterval.account_id == account_id,
            RatedInterval.t_start >= month_start,
            RatedInterval.t_start < before,
        )
    )
    return Decimal(total or 0)


def _terms(account: Account) -> AccountTerms:
    return AccountTerms(
        capacity_kva=account.capacity_kva, free_units_eligible=account.free_units_eligible
    )
