"""The balance engine: consumption in, ledger entries, alerts and supply decisions out.

One round (``run_once``), each step in one transaction with the stream position it
reached, so a restart repeats nothing and misses nothing:

1. read interval consumption after the stored offset; rate each interval of a
   central-balance meter with the account's tariff in force at that time and book the
   charge (a re-read interval books only the difference, as an adjustment); hold what
   cannot be charged (no account, a tariff gap, flagged or negative consumption) with the
   reason; post each complete local day's fixed charges once;
2. take new payments into account (top-up amount for alerts, emergency credit repaid
   first), book the weekly debt instalments that fell due, announce low-balance
   thresholds once per crossing (into the notification outbox, once per channel), and
   decide on the supply with :mod:`vending.balance.policy`, recording every decision
   with its reason;
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
from headend.interface import MeterSummary, find_meter
from protocols.quantities import Quantity
from vending import localtime
from vending.accounts import load_tariff
from vending.balance.alerts import (
    DEFAULT_THRESHOLDS_PERCENT,
    days_left,
    days_left_crossed,
    thresholds_crossed,
)
from vending.balance.policy import AccountSituation, Action, DisconnectPolicy, decide
from vending.debt import DebtRecoveryRule, DebtRuleError, weekly_instalments_due
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
from vending.money import Currency, Money
from vending.rating import rate_interval
from vending.tariffs import AccountTerms, Tariff, TariffError

log = logging.getLogger(__name__)

CONSUMPTION_CURSOR = "balance-engine:consumption"
LEDGER_CURSOR = "balance-engine:ledger"
ENGINE_ACTOR = "balance-engine"
# The register that is sold: the stream carries every cumulative register (export too).
RATED_QUANTITY = Quantity.ENERGY_IMPORT_KWH.value
# Longer than any vend transaction stays open between inserting its payment and committing.
PAYMENT_SETTLE = timedelta(minutes=5)
# Days-left alerts sent are kept beside the percentages in ``alerts_sent`` ("days:3").
DAYS_PREFIX = "days:"
# What the customer's money is spent on, for the days-left estimate.
SPENDING_KINDS = ("consumption", "adjustment", "fixed_charge")
MIN_SPENDING_SPAN = timedelta(hours=6)
WEEK = timedelta(days=7)
INSTALMENT_CHECK_EVERY = timedelta(minutes=1)
_LOCKED_ACCOUNTS = "balance-engine:locked-accounts"  # Session.info key: (transaction, ids)


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
    ) -> int:
        """The queued command's id. Raises ValueError (with a ``code`` where the
        requester has one) for a command it refuses for good."""
        ...


@dataclass(frozen=True, slots=True)
class EngineSettings:
    policy: DisconnectPolicy
    thresholds_percent: tuple[Decimal, ...] = DEFAULT_THRESHOLDS_PERCENT
    # Alert when the balance lasts this many days or fewer at the recent spending rate
    # (consumption and fixed charges over ``spending_window``); empty: no such alerts.
    thresholds_days_left: tuple[int, ...] = ()
    spending_window: timedelta = timedelta(days=7)
    emergency_credit_minor: int = 0
    batch_size: int = 500
    # Every announcement is written once per channel (email, sms, webhook, record).
    notification_channels: tuple[str, ...] = ("record",)


@dataclass
class RoundReport:
    rated: int = 0
    held: int = 0
    skipped: int = 0
    records: int = 0  # stream records read this round
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
        self._instalments_checked_at: datetime | None = None

    async def run(self, interval_s: float = 1.0) -> None:
        """Run rounds until cancelled; a failing round is logged and retried."""
        while True:
            behind = False
            try:
                report = await asyncio.to_thread(self.run_once)
                if report.rated or report.decisions:
                    log.info("balance round: %s", report)
                # A full batch means more is waiting: go on at once, so a backlog (after a
                # restart, or a burst) does not hold the decisions behind it back.
                behind = report.records >= self._settings.batch_size
            except Exception:
                log.exception("balance engine round failed; retrying")
            if not behind:
                await asyncio.sleep(interval_s)

    def run_once(self) -> RoundReport:
        report = RoundReport()
        now = self._clock()
        with self._session_factory() as session, session.begin():
            touched = self._rate_new_consumption(session, report, now)
            touched |= self._take_new_payments(session, now)
            touched |= self._book_debt_instalments(session, now)
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
        known = _RoundLookups(session, records)
        report.records = len(records)
        for record in records:
            account_id = self._rate_one(session, record, report, now, known)
            if account_id is not None:
                touched.add(account_id)
            cursor.position = record.offset
        return touched

    def _rate_one(
        self,
        session: Session,
        record: ConsumptionRecord,
        report: RoundReport,
        now: datetime,
        known: _RoundLookups,
    ) -> int | None:
        meter = known.meter(record.meter_id)
        if meter is None:
            self._hold(session, record, report, now, "meter not in the registry")
            return None
        if meter.prepaid_mode != "central" or record.quantity != RATED_QUANTITY:
            # Token meters keep their credit in the meter; export and other registers are
            # published too, but only imported energy is sold.
            report.skipped += 1
            return None
        link = known.link_at(record.meter_id, record.t_start)
        if link is None:
            self._hold(session, record, report, now, "meter not on any account then")
            return None
        if record.quality == "flagged":
            self._hold(session, record, report, now, f"flagged reading: {record.reason}")
            return self._reverse_rated(session, record, now, known)
        if record.energy_kwh < 0:
            self._hold(session, record, report, now, "negative consumption")
            return self._reverse_rated(session, record, now, known)
        account = known.account(link.account_id)
        try:
            tariff = known.tariff(account.tariff_code)
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
        rated = known.rated(record)
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
            known.remember(rated)
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

    def _reverse_rated(
        self, session: Session, record: ConsumptionRecord, now: datetime, known: _RoundLookups
    ) -> int | None:
        """A held correction of an interval charged before: give the charge back, so the
        customer never pays for consumption an operator has not confirmed. Returns the
        account whose balance changed, or None."""
        rated = known.rated(record)
        if rated is None or (rated.charge_minor == 0 and rated.energy_kwh == 0):
            return None
        _book(
            session,
            rated.account_id,
            "adjustment",
            rated.charge_minor,
            f"rerate:{rated.id}:{record.offset}",
            now,
            {"kwh_before": str(rated.energy_kwh), "kwh_after": "0", "held": True},
        )
        rated.energy_kwh, rated.charge_minor = Decimal(0), 0
        rated.source_offset, rated.rated_at = record.offset, now
        return rated.account_id

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
        """Payments not yet taken into account, each exactly once (per-account cursor).

        Ledger ids are handed out when a payment is inserted and commits follow in any
        order across accounts (PostgreSQL), so a payment may become visible after one
        with a higher id. The shared cursor therefore only passes payments older than
        ``PAYMENT_SETTLE``; younger ones are read again and skipped by the account's own
        cursor, which is exact because one account's payments commit under its lock.
        """
        cursor = _cursor(session, LEDGER_CURSOR)
        rows = session.execute(
            select(LedgerEntry, CentralAccountState.payments_taken_through)
            .outerjoin(
                CentralAccountState, CentralAccountState.account_id == LedgerEntry.account_id
            )
            .where(LedgerEntry.id > cursor.position, LedgerEntry.kind == "payment")
            .order_by(LedgerEntry.id)
        ).all()
        touched = set()
        for payment, taken_through in rows:
            if taken_through is not None and payment.id <= taken_through:
                continue
            state = _locked_state(session, payment.account_id)
            state.payments_taken_through = payment.id
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
        settled = [p.id for p, _ in rows if p.created_at <= now - PAYMENT_SETTLE]
        if settled:
            cursor.position = max(cursor.position, max(settled))
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
        state = _locked_state(session, account_id)
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
            meter, money = _customer_facts(session, account_id, balance)
            self._notify(
                session,
                account_id,
                "disconnect",
                f"Meter {meter}: your balance ({money}) is used up and your supply is being "
                "disconnected. Top up to reconnect.",
                now,
            )
        elif decision.action is Action.RECONNECT:
            state.supply_requested = "connected"
            meter, money = _customer_facts(session, account_id, balance)
            self._notify(
                session,
                account_id,
                "reconnect",
                f"Meter {meter}: thank you for your top-up; balance {money}. "
                "Your supply is being reconnected.",
                now,
            )
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
        sent_days = {
            int(a.removeprefix(DAYS_PREFIX))
            for a in state.alerts_sent or []
            if a.startswith(DAYS_PREFIX)
        }
        sent = {Decimal(p) for p in state.alerts_sent or [] if not p.startswith(DAYS_PREFIX)}
        crossed = thresholds_crossed(
            balance, state.last_top_up_minor, sent, self._settings.thresholds_percent
        )
        estimate = self._days_left(session, state.account_id, balance, now)
        crossed_days = days_left_crossed(estimate, sent_days, self._settings.thresholds_days_left)
        if not (crossed or crossed_days):
            return
        meter, money = _customer_facts(session, state.account_id, balance)
        for days in crossed_days:
            self._notify(
                session,
                state.account_id,
                f"low_balance_{days}_days",
                f"Meter {meter}: balance {money}, about {estimate:.1f} days at your "
                "recent use. Please top up soon.",
                now,
            )
        for percent in crossed:
            self._notify(
                session,
                state.account_id,
                f"low_balance_{percent}",
                f"Meter {meter}: balance {money}, at or below {percent}% of your last "
                "top-up. Please top up soon.",
                now,
            )
        state.alerts_sent = sorted(
            {str(p) for p in sent | set(crossed)}
            | {f"{DAYS_PREFIX}{d}" for d in sent_days | set(crossed_days)}
        )

    def _days_left(
        self, session: Session, account_id: int, balance: int, now: datetime
    ) -> Decimal | None:
        """Days the balance lasts at the recent spending rate; None when days-left alerts
        are off or nothing was spent in the window."""
        if not self._settings.thresholds_days_left:
            return None
        spent, first = session.execute(
            select(
                func.coalesce(func.sum(LedgerEntry.amount_minor), 0),
                func.min(LedgerEntry.created_at),
            ).where(
                LedgerEntry.account_id == account_id,
                LedgerEntry.kind.in_(SPENDING_KINDS),
                LedgerEntry.created_at > now - self._settings.spending_window,
            )
        ).one()
        # The rate over the time actually covered: a new account's first day is not
        # spread over the whole window (that would promise too many days).
        covered = max(now - first, MIN_SPENDING_SPAN) if first is not None else MIN_SPENDING_SPAN
        return days_left(balance, -int(spent or 0), covered)

    def _notify(
        self, session: Session, account_id: int, kind: str, message: str, now: datetime
    ) -> None:
        """Into the outbox, once per configured channel (each delivered and retried on its
        own by the dispatcher). Messages say what a customer SMS says: no secrets."""
        for channel in self._settings.notification_channels:
            session.add(
                Notification(
                    account_id=account_id,
                    kind=kind,
                    channel=channel,
                    message=message,
                    created_at=now,
                    status="pending",
                    attempts=0,
                )
            )

    def _book_debt_instalments(self, session: Session, now: datetime) -> set[int]:
        """Book each full week's debt instalment of central accounts, once.

        A schedule starts when the engine first sees a central account with arrears and
        a weekly instalment; week n ends n x 7 days later. Each week books one
        ``debt_recovery`` entry (reference ``debt-week:<schedule start>:<n>``, so a replay
        books nothing twice) of the instalment, never more than the debt, and lowers the
        account's debt in the same transaction. The schedule ends when the debt is paid.

        Weeks need no sub-second precision: this looks at the accounts with arrears once
        per ``INSTALMENT_CHECK_EVERY`` of the engine's clock, not every round, and locks
        only an account it has something to change on.
        """
        last = self._instalments_checked_at
        if last is not None and last <= now < last + INSTALMENT_CHECK_EVERY:
            return set()
        self._instalments_checked_at = now
        schedules = {
            state.account_id: state
            for state in session.scalars(
                select(CentralAccountState).where(
                    CentralAccountState.debt_instalments_from.is_not(None)
                )
            )
        }
        candidates = session.scalars(
            select(Account)
            .where((Account.debt_minor > 0) | Account.id.in_(list(schedules)))
            .order_by(Account.id)
        ).all()
        touched: set[int] = set()
        for account in candidates:
            rule = _weekly_rule(account)
            schedule = schedules.get(account.id)
            if schedule is None and rule is None:
                continue  # arrears recovered from purchases only
            started = schedule.debt_instalments_from if schedule else None
            if (
                started is not None
                and schedule is not None
                and rule is not None
                and account.debt_minor > 0
                and (now - started) // WEEK <= schedule.debt_weeks_booked
            ):
                continue  # this week's instalment is not due yet
            if not _is_central(session, account.id):
                continue
            state = _locked_state(session, account.id)  # vends change the debt too
            if rule is None or account.debt_minor <= 0:
                state.debt_instalments_from, state.debt_weeks_booked = None, 0
                continue
            if state.debt_instalments_from is None:
                state.debt_instalments_from, state.debt_weeks_booked = now, 0
                continue
            full_weeks = (now - state.debt_instalments_from) // WEEK
            if full_weeks <= state.debt_weeks_booked:
                continue
            start = state.debt_instalments_from
            currency = Currency.of(account.currency)
            for week in range(state.debt_weeks_booked + 1, full_weeks + 1):
                due = weekly_instalments_due(Money(account.debt_minor, currency), rule, 1)
                if due.minor == 0:
                    break
                _book(
                    session,
                    account.id,
                    "debt_recovery",
                    -due.minor,
                    f"debt-week:{start:%Y%m%dT%H%M%S}:{week}",
                    now,
                    {"week": week, "week_ending": (start + week * WEEK).isoformat()},
                )
                account.debt_minor -= due.minor
            state.debt_weeks_booked = full_weeks
            if account.debt_minor <= 0:
                state.debt_instalments_from, state.debt_weeks_booked = None, 0
            touched.add(account.id)
        return touched

    # --- step 3: commands --------------------------------------------------------------

    def _request_pending_commands(self) -> list[int]:
        with self._session_factory() as session:
            pending = session.scalars(
                select(BalanceDecision).where(
                    BalanceDecision.action.in_((Action.DISCONNECT.value, Action.RECONNECT.value)),
                    BalanceDecision.command_id.is_(None),
                    BalanceDecision.command_error.is_(None),
                    BalanceDecision.meter_id != 0,
                )
            ).all()
            wanted = [(d.id, d.meter_id, d.action, d.reason) for d in pending]
        requested = []
        for decision_id, meter_id, action, reason in wanted:
            name = "disconnect" if action == Action.DISCONNECT.value else "connect"
            try:
                command_id = self._commands.request(
                    meter_id,
                    name,
                    requested_by=ENGINE_ACTOR,
                    reason=reason,
                    idempotency_key=f"balance-decision:{decision_id}",
                )
            except ValueError as exc:
                # Refused for good (a meter the head-end cannot command, say): kept on the
                # decision for an operator; the other accounts' commands still go out.
                code = getattr(exc, "code", "refused")
                log.warning("command for balance decision %s refused: %s", decision_id, exc)
                with self._session_factory() as session, session.begin():
                    decision = session.get_one(BalanceDecision, decision_id)
                    decision.command_error = f"{code}: {exc}"
                continue
            except Exception:
                log.exception("command for balance decision %s failed; retried", decision_id)
                continue
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


def _customer_facts(session: Session, account_id: int, balance: int) -> tuple[str, str]:
    """The meter number and the balance as a customer message shows them."""
    account = session.get_one(Account, account_id)
    meter = _open_meter_summary(session, account_id)
    label = (meter.meter_number if meter else None) or account.account_number
    return label, str(Money(balance, Currency.of(account.currency)))


def _is_central(session: Session, account_id: int) -> bool:
    meter = _open_meter_summary(session, account_id)
    return meter is not None and meter.prepaid_mode == "central"


def _open_meter_summary(session: Session, account_id: int) -> MeterSummary | None:
    meter_id = _open_meter(session, account_id)
    return find_meter(session, meter_id=meter_id) if meter_id else None


def _weekly_rule(account: Account) -> DebtRecoveryRule | None:
    """The account's rule if it has a weekly instalment; a broken stored rule is logged
    and treated as none (the vend path refuses it with its own error)."""
    try:
        rule = DebtRecoveryRule.from_document(account.debt_recovery or {})
    except DebtRuleError as exc:
        log.warning("account %s: %s", account.account_number, exc)
        return None
    return rule if rule.weekly_instalment_minor > 0 else None


def _cursor(session: Session, name: str) -> EngineCursor:
    cursor = session.scalar(select(EngineCursor).where(EngineCursor.name == name).with_for_update())
    if cursor is None:
        cursor = EngineCursor(name=name, position=0)
        session.add(cursor)
        session.flush()
    return cursor


def _locked_state(session: Session, account_id: int) -> CentralAccountState:
    """The account's central state, read under the account's row lock, taken once per
    transaction: vends and emergency credit take the same lock, so neither changes the
    account, its ledger or its state between the engine's read and its commit (the
    account row is re-read under the lock: its debt may have moved since the round
    looked it up)."""
    transaction = session.get_transaction()
    held = session.info.get(_LOCKED_ACCOUNTS)
    if held is None or held[0] is not transaction:
        held = session.info[_LOCKED_ACCOUNTS] = (transaction, set())
    locked: set[int] = held[1]
    if account_id not in locked:
        session.scalar(
            select(Account)
            .where(Account.id == account_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        locked.add(account_id)
        state = session.get(CentralAccountState, account_id, populate_existing=True)
        if state is not None:
            return state
    return _state(session, account_id)


def _state(session: Session, account_id: int) -> CentralAccountState:
    state = session.get(CentralAccountState, account_id)
    if state is None:
        account = session.get_one(Account, account_id)
        # Converted to central prepaid when its meter was linked (or, for an account
        # without a meter now, when the account was opened).
        linked_at = session.scalar(
            select(func.max(AccountMeter.linked_at)).where(
                AccountMeter.account_id == account_id, AccountMeter.unlinked_at.is_(None)
            )
        )
        state = CentralAccountState(
            account_id=account_id,
            converted_at=linked_at or account.created_at,
            last_top_up_minor=0,
            alerts_sent=[],
            emergency_credit_outstanding_minor=0,
            supply_requested="connected",
        )
        session.add(state)
        session.flush()
    return state


class _RoundLookups:
    """What rating one round's records looks up, read once per round in bulk and held.

    Meters, their account links, the rated intervals of the round's keys, accounts and
    tariffs; everything rated in the round is added as it is booked, so a record that
    corrects an earlier one of the same round finds it.
    """

    def __init__(self, session: Session, records: Sequence[ConsumptionRecord]) -> None:
        self._session = session
        meter_ids = {r.meter_id for r in records}
        self._meters: dict[int, MeterSummary | None] = {}
        self._links: dict[int, list[AccountMeter]] = {m: [] for m in meter_ids}
        self._accounts: dict[int, Account] = {}
        self._tariffs: dict[str, Tariff] = {}
        self._rated: dict[tuple[int, str, datetime], RatedInterval] = {}
        if not records:
            return
        for link in session.scalars(
            select(AccountMeter).where(AccountMeter.meter_id.in_(meter_ids))
        ):
            self._links[link.meter_id].append(link)
        starts = {r.t_start for r in records}
        for rated in session.scalars(
            select(RatedInterval).where(
                RatedInterval.meter_id.in_(meter_ids),
                RatedInterval.t_start >= min(starts),
                RatedInterval.t_start <= max(starts),
            )
        ):
            self.remember(rated)

    def meter(self, meter_id: int) -> MeterSummary | None:
        if meter_id not in self._meters:
            self._meters[meter_id] = find_meter(self._session, meter_id=meter_id)
        return self._meters[meter_id]

    def link_at(self, meter_id: int, at: datetime) -> AccountMeter | None:
        for link in self._links.get(meter_id, ()):
            if link.linked_at <= at and (link.unlinked_at is None or link.unlinked_at > at):
                return link
        return None

    def account(self, account_id: int) -> Account:
        if account_id not in self._accounts:
            self._accounts[account_id] = self._session.get_one(Account, account_id)
        return self._accounts[account_id]

    def tariff(self, code: str) -> Tariff:
        if code not in self._tariffs:
            self._tariffs[code] = load_tariff(self._session, code)
        return self._tariffs[code]

    def rated(self, record: ConsumptionRecord) -> RatedInterval | None:
        return self._rated.get((record.meter_id, record.quantity, record.t_start))

    def remember(self, rated: RatedInterval) -> None:
        self._rated[(rated.meter_id, rated.quantity, rated.t_start)] = rated


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
