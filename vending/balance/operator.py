"""What operators see of the balance engine and what they decide: an account's central
balance with the engine's latest decisions and their commands' outcomes, the ledger a
page at a time, the operator's list (protected customers with an exhausted balance,
kept connected until an operator decides) and held consumption.

Reads only, except ``review_listed_account`` and ``resolve_held``, which change nothing
when they raise. The head-end's commands are read through ``headend.interface`` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from headend.interface import CommandOutcome, command_outcomes, find_meter
from vending.balance.engine import balance_minor
from vending.balance.policy import Action
from vending.errors import VendingError
from vending.models import (
    Account,
    AccountMeter,
    BalanceDecision,
    CentralAccountState,
    Customer,
    HeldConsumption,
    LedgerEntry,
    Notification,
)
from vending.models_balance import OperatorReview

MAX_PAGE = 500
MAX_NOTE_CHARS = 1000


@dataclass(frozen=True, slots=True)
class DecisionView:
    """One supply decision with the head-end command it asked for, if any."""

    decision: BalanceDecision
    command: CommandOutcome | None


@dataclass(frozen=True, slots=True)
class BalanceView:
    """An account's central balance as the engine sees it. ``state`` is None until the
    engine first looked at the account (no consumption, no payment yet)."""

    account: Account
    balance_minor: int
    state: CentralAccountState | None
    meter_numbers: list[str]
    decisions: list[DecisionView]
    notifications: list[Notification]


def balance_view(session: Session, account: Account, *, decisions: int = 10) -> BalanceView:
    """The balance (the ledger's sum), the engine's memory of the account, its latest
    ``decisions`` (newest first) with their commands' state and outcome, and as many of
    the latest notifications (alerts, disconnect and reconnect notices)."""
    latest = list(
        session.scalars(
            select(BalanceDecision)
            .where(BalanceDecision.account_id == account.id)
            .order_by(BalanceDecision.id.desc())
            .limit(max(1, min(decisions, MAX_PAGE)))
        )
    )
    outcomes = command_outcomes(session, [d.command_id for d in latest if d.command_id])
    notifications = session.scalars(
        select(Notification)
        .where(Notification.account_id == account.id)
        .order_by(Notification.id.desc())
        .limit(max(1, min(decisions, MAX_PAGE)))
    )
    return BalanceView(
        account=account,
        balance_minor=balance_minor(session, account.id),
        state=session.get(CentralAccountState, account.id),
        meter_numbers=_open_meter_numbers(session, account.id),
        decisions=[
            DecisionView(d, outcomes.get(d.command_id) if d.command_id else None) for d in latest
        ],
        notifications=list(notifications),
    )


@dataclass(frozen=True, slots=True)
class LedgerPage:
    """Entries newest first; ``next_before_id`` asks for the following page (None: last)."""

    entries: list[LedgerEntry]
    next_before_id: int | None


def ledger_page(
    session: Session, account_id: int, *, before_id: int | None = None, limit: int = 50
) -> LedgerPage:
    """One page of the account's ledger, newest first, entries with ids below
    ``before_id``. Keyset paging: entries booked meanwhile never shift a page.
    VendingError("invalid_request") for a limit outside 1..MAX_PAGE."""
    if not 1 <= limit <= MAX_PAGE:
        raise VendingError("invalid_request", f"limit must be 1..{MAX_PAGE}")
    query = select(LedgerEntry).where(LedgerEntry.account_id == account_id)
    if before_id is not None:
        query = query.where(LedgerEntry.id < before_id)
    rows = list(session.scalars(query.order_by(LedgerEntry.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    entries = rows[:limit]
    return LedgerPage(entries, entries[-1].id if more and entries else None)


# --- the operator's list ---------------------------------------------------------------


class ReviewAction(StrEnum):
    ACKNOWLEDGE = "acknowledge"  # seen and decided: the supply stays on
    NOTE = "note"  # a remark only; the entry still waits for an acknowledgement


@dataclass(frozen=True, slots=True)
class ListedAccount:
    """A protected customer's exhausted account the engine did not disconnect.

    ``listed_since`` is when the engine put it on the list, ``reason`` its words;
    ``reviews`` are the operators' acts on this listing, newest first.
    """

    account: Account
    customer: Customer
    decision: BalanceDecision
    exhausted_since: datetime | None
    balance_minor: int
    reviews: list[OperatorReview]

    @property
    def acknowledged(self) -> bool:
        return any(r.action == ReviewAction.ACKNOWLEDGE for r in self.reviews)


def operator_list(session: Session, *, account_id: int | None = None) -> list[ListedAccount]:
    """Every account (or only ``account_id``) whose latest decision put it on the
    operator's list and that is still exhausted and connected, longest-listed first."""
    query = (
        select(CentralAccountState, BalanceDecision, Account, Customer)
        .join(BalanceDecision, BalanceDecision.id == CentralAccountState.last_decision_id)
        .join(Account, Account.id == CentralAccountState.account_id)
        .join(Customer, Customer.id == Account.customer_id)
        .where(
            BalanceDecision.action == Action.OPERATOR_LIST.value,
            CentralAccountState.exhausted_since.is_not(None),
            CentralAccountState.supply_requested == "connected",
        )
        .order_by(BalanceDecision.decided_at, BalanceDecision.id)
    )
    if account_id is not None:
        query = query.where(CentralAccountState.account_id == account_id)
    rows = session.execute(query).all()
    reviews: dict[int, list[OperatorReview]] = {}
    decision_ids = [decision.id for _, decision, _, _ in rows]
    if decision_ids:
        for review in session.scalars(
            select(OperatorReview)
            .where(OperatorReview.decision_id.in_(decision_ids))
            .order_by(OperatorReview.id.desc())
        ):
            reviews.setdefault(review.decision_id, []).append(review)
    return [
        ListedAccount(
            account=account,
            customer=customer,
            decision=decision,
            exhausted_since=state.exhausted_since,
            balance_minor=balance_minor(session, account.id),
            reviews=reviews.get(decision.id, []),
        )
        for state, decision, account, customer in rows
    ]


def review_listed_account(
    session: Session,
    account: Account,
    action: ReviewAction,
    note: str,
    *,
    actor: str,
    now: datetime,
) -> OperatorReview:
    """Record an operator's act on the account's current listing (the caller audits it).

    VendingError: ``not_on_operator_list`` when the account is not listed now,
    ``reason_required`` for a note without text or a text over MAX_NOTE_CHARS.
    """
    note = note.strip()
    if action is ReviewAction.NOTE and not note:
        raise VendingError("reason_required", "a note needs its text")
    if len(note) > MAX_NOTE_CHARS:
        raise VendingError("reason_required", f"a note is at most {MAX_NOTE_CHARS} characters")
    listed = next(iter(operator_list(session, account_id=account.id)), None)
    if listed is None:
        raise VendingError(
            "not_on_operator_list",
            f"account {account.account_number} is not on the operator's list",
        )
    review = OperatorReview(
        account_id=account.id,
        decision_id=listed.decision.id,
        action=action.value,
        note=note,
        actor=actor,
        created_at=now,
    )
    session.add(review)
    session.flush()
    return review


# --- held consumption ------------------------------------------------------------------


class HeldStatus(StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"
    ALL = "all"


def held_consumption(
    session: Session,
    *,
    status: HeldStatus = HeldStatus.OPEN,
    before_id: int | None = None,
    limit: int = 50,
) -> list[HeldConsumption]:
    """Held intervals, newest first. VendingError("invalid_request") for a bad limit."""
    if not 1 <= limit <= MAX_PAGE:
        raise VendingError("invalid_request", f"limit must be 1..{MAX_PAGE}")
    query = select(HeldConsumption)
    if status is HeldStatus.OPEN:
        query = query.where(HeldConsumption.resolved_at.is_(None))
    elif status is HeldStatus.RESOLVED:
        query = query.where(HeldConsumption.resolved_at.is_not(None))
    if before_id is not None:
        query = query.where(HeldConsumption.id < before_id)
    return list(session.scalars(query.order_by(HeldConsumption.id.desc()).limit(limit)))


def resolve_held(
    session: Session, held_id: int, note: str, *, actor: str, now: datetime
) -> HeldConsumption:
    """Mark a held interval resolved with the operator's note (the caller audits it).

    Resolving books nothing: a charge the operator decides on is a separate adjustment.
    VendingError: ``held_consumption_not_found``, ``already_resolved``,
    ``reason_required`` (no note, or over MAX_NOTE_CHARS).
    """
    note = note.strip()
    if not note or len(note) > MAX_NOTE_CHARS:
        raise VendingError(
            "reason_required", f"say how it was resolved (1..{MAX_NOTE_CHARS} characters)"
        )
    held = session.get(HeldConsumption, held_id, with_for_update=True)
    if held is None:
        raise VendingError("held_consumption_not_found", f"no held consumption {held_id}")
    if held.resolved_at is not None:
        raise VendingError(
            "already_resolved",
            f"held consumption {held_id} was resolved by {held.resolved_by} "
            f"at {held.resolved_at.isoformat()}",
        )
    held.resolved_at, held.resolved_by, held.resolution_note = now, actor, note
    session.flush()
    return held


def _open_meter_numbers(session: Session, account_id: int) -> list[str]:
    numbers = []
    for meter_id in session.scalars(
        select(AccountMeter.meter_id).where(
            AccountMeter.account_id == account_id, AccountMeter.unlinked_at.is_(None)
        )
    ):
        meter = find_meter(session, meter_id=meter_id)
        if meter is not None and meter.meter_number:
            numbers.append(meter.meter_number)
    return numbers
