"""Reprints and reversals of counter vends, and the record of tokens a meter accepted.

A reversal gives the customer's money back and undoes everything the vend did: the
account's pricing state is put back from the snapshot taken before the vend (debt,
change carried, month-to-date kWh, fixed charges paid through, last purchase), the
vending point's outstanding cash goes down, and a central-mode account gets a reversal
ledger entry. Rules, each refused with its own VendingError code:

- ``vend_already_reversed``: a vend is reversed once.
- ``reversal_not_latest``: only the account's latest standing vend can be reversed,
  because every later vend was priced on the state this one left (blocks, free units,
  debt); reverse the later ones first.
- ``token_accepted``: a token-mode vend whose token the meter is known to have accepted
  (a :class:`TokenAcceptance` row, written when the head-end receives the meter's
  ``token_accepted`` event with that TID) cannot be reversed: the energy is in the meter.
  Where acceptance is not known (a keypad meter with no communication) the supervisor's
  reason is the record.
- ``reversal_without_snapshot``: a vend made outside the counter API has no snapshot.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from vending.errors import VendingError
from vending.models import Account, LedgerEntry, Vend, VendingPoint
from vending.models_counter import TokenAcceptance

REVERSED = "reversed"

# Another source of "the meter accepted the token with this TID": (session, meter id, TID).
AcceptanceCheck = Callable[[Session, int, int], bool]


def account_state(account: Account) -> dict[str, Any]:
    return {
        "debt_minor": account.debt_minor,
        "carry_over_minor": account.carry_over_minor,
        "month_to_date_kwh": str(account.month_to_date_kwh),
        "last_purchase_at": (
            None if account.last_purchase_at is None else account.last_purchase_at.isoformat()
        ),
        "fixed_charged_through": (
            None
            if account.fixed_charged_through is None
            else account.fixed_charged_through.isoformat()
        ),
    }


def _restore(account: Account, state: dict[str, Any]) -> None:
    account.debt_minor = int(state["debt_minor"])
    account.carry_over_minor = int(state["carry_over_minor"])
    account.month_to_date_kwh = Decimal(state["month_to_date_kwh"])
    last = state["last_purchase_at"]
    account.last_purchase_at = None if last is None else datetime.fromisoformat(last)
    through = state["fixed_charged_through"]
    account.fixed_charged_through = None if through is None else date.fromisoformat(through)


def get_vend(session: Session, receipt_number: str, *, lock: bool = False) -> Vend:
    query = select(Vend).where(Vend.receipt_number == receipt_number)
    if lock:
        query = query.with_for_update()
    vend = session.scalar(query)
    if vend is None:
        raise VendingError("vend_not_found", f"no vend with receipt number {receipt_number!r}")
    return vend


def reprint(session: Session, receipt_number: str) -> Vend:
    """Count one more copy of a standing vend's receipt; VendingError vend_not_found,
    vend_reversed (a reversed vend's token must not be handed out again as valid)."""
    vend = get_vend(session, receipt_number, lock=True)
    if vend.status == REVERSED:
        raise VendingError(
            "vend_reversed",
            f"vend {receipt_number} was reversed on {vend.reversed_at}: its token is void",
        )
    vend.reprints += 1
    session.flush()
    return vend


def token_known_accepted(session: Session, meter_id: int, tid: int) -> bool:
    return (
        session.scalar(
            select(TokenAcceptance.id).where(
                TokenAcceptance.meter_id == meter_id, TokenAcceptance.tid == tid
            )
        )
        is not None
    )


def record_token_accepted(
    session: Session, *, meter_id: int, tid: int, at: datetime, source: str
) -> bool:
    """Note that a meter accepted the token with ``tid`` (idempotent: False when already
    known). Called for a meter's ``token_accepted`` event or a technician's report."""
    if token_known_accepted(session, meter_id, tid):
        return False
    try:
        with session.begin_nested():
            session.add(TokenAcceptance(meter_id=meter_id, tid=tid, accepted_at=at, source=source))
            session.flush()
    except IntegrityError:
        return False
    return True


def reverse_vend(
    session: Session,
    receipt_number: str,
    *,
    reason: str,
    actor: str,
    now: datetime,
    accepted_elsewhere: AcceptanceCheck | None = None,
) -> Vend:
    """Reverse a vend (see the module docstring for the rules and their error codes).

    ``accepted_elsewhere`` asks another record (the head-end's meter events) whether the
    meter accepted the vend's token, besides the ``token_acceptances`` table.
    """
    if not reason.strip():
        raise VendingError("reason_required", "a reversal needs a reason")
    vend = get_vend(session, receipt_number, lock=True)
    if vend.status == REVERSED:
        raise VendingError("vend_already_reversed", f"vend {receipt_number} is already reversed")
    account = session.scalar(select(Account).where(Account.id == vend.account_id).with_for_update())
    assert account is not None  # a foreign key
    later = session.scalar(
        select(Vend.receipt_number).where(
            Vend.account_id == vend.account_id, Vend.id > vend.id, Vend.status != REVERSED
        )
    )
    if later is not None:
        raise VendingError(
            "reversal_not_latest",
            f"vend {later} was made on this account after {receipt_number}: reverse it first",
        )
    if vend.tid is not None and (
        token_known_accepted(session, vend.meter_id, vend.tid)
        or (accepted_elsewhere is not None and accepted_elsewhere(session, vend.meter_id, vend.tid))
    ):
        raise VendingError(
            "token_accepted",
            f"the meter has accepted the token of {receipt_number}: it cannot be reversed",
        )
    if vend.account_before is None:
        raise VendingError(
            "reversal_without_snapshot",
            f"vend {receipt_number} was not made at the counter; reverse it in its channel",
        )
    _restore(account, vend.account_before)
    if vend.vending_point_id is not None:
        point = session.scalar(
            select(VendingPoint).where(VendingPoint.id == vend.vending_point_id).with_for_update()
        )
        assert point is not None
        # Cash already banked was handed back from the drawer; never below zero.
        point.outstanding_minor = max(0, point.outstanding_minor - vend.tendered_minor)
    payment = session.scalar(
        select(LedgerEntry).where(
            LedgerEntry.account_id == account.id,
            LedgerEntry.kind == "payment",
            LedgerEntry.reference == f"vend:{vend.id}",
        )
    )
    if payment is not None:
        session.add(
            LedgerEntry(
                account_id=account.id,
                kind="reversal",
                amount_minor=-payment.amount_minor,
                reference=f"vend:{vend.id}",
                detail={"receipt": vend.receipt_number, "reason": reason},
                created_at=now,
            )
        )
    vend.status = REVERSED
    vend.reversed_at = now
    vend.reversed_by = actor
    vend.reversal_reason = reason
    session.flush()
    return vend
