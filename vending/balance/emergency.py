"""Emergency credit asked for at the counter or by a supervisor: the checks around the
engine's ``take_emergency_credit`` (which lends, and is repaid from the next top-up)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from headend.audit import AuditSink
from headend.interface import find_meter
from vending.balance.engine import take_emergency_credit
from vending.errors import VendingError
from vending.models import Account, AccountMeter, LedgerEntry


def grant_emergency_credit(
    session: Session,
    account: Account,
    amount_minor: int,
    *,
    actor: str,
    now: datetime,
    audit: AuditSink,
) -> LedgerEntry:
    """Lend the configured ``amount_minor`` (minor units) to a central-balance account and
    audit it, in the caller's transaction.

    VendingError: ``emergency_credit_disabled`` (amount 0 configured),
    ``not_central_balance`` (no central-mode meter on the account), and from the engine
    ``balance_not_low``, ``emergency_credit_outstanding``. Nothing is stored then.
    """
    if amount_minor <= 0:
        raise VendingError(
            "emergency_credit_disabled",
            "emergency credit is not offered (GRIDVEND_EMERGENCY_CREDIT_MINOR is 0)",
        )
    # The account row lock queues two clerks asking at once: the second sees the first's
    # credit outstanding instead of lending twice (SQLite queues on BEGIN IMMEDIATE).
    session.scalar(select(Account.id).where(Account.id == account.id).with_for_update())
    if not _has_central_meter(session, account.id):
        raise VendingError(
            "not_central_balance",
            f"account {account.account_number} has no central-balance meter: "
            "emergency credit is for central prepaid",
        )
    entry = take_emergency_credit(session, account.id, amount_minor, actor=actor, now=now)
    audit.record(
        session,
        actor=actor,
        action="balance.emergency_credit",
        subject=f"account:{account.account_number}",
        detail={"amount_minor": amount_minor, "ledger_entry": entry.id},
    )
    return entry


def _has_central_meter(session: Session, account_id: int) -> bool:
    for meter_id in session.scalars(
        select(AccountMeter.meter_id).where(
            AccountMeter.account_id == account_id, AccountMeter.unlinked_at.is_(None)
        )
    ):
        meter = find_meter(session, meter_id=meter_id)
        if meter is not None and meter.prepaid_mode == "central":
            return True
    return False
