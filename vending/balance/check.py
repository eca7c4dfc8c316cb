"""The balance check: every central account's ledger traced back to its causes.

The balance is by definition the ledger's sum, so what can go wrong is a ledger row
without a cause (inserted by hand, booked twice, booked to the wrong account) or a cause
without its row. For each account this recomputes the balance from the causes and
compares:

- payments and vends: each central top-up vend (``breakdown.kind == "central_top_up"``)
  has exactly one ``payment`` entry ``vend:<id>`` of the amount it credited; each
  ``reversal`` entry reverses a reversed vend's payment exactly;
- rated intervals and consumption: the ``consumption`` (``interval:<id>``) and
  ``adjustment`` (``rerate:<id>:<offset>``) entries of each rated interval sum to minus
  its current charge;
- emergency credit: credit lent less repaid equals what the engine has outstanding;
- no entry of a kind the engine does not know.

Fixed charges and debt recovery have no separate record to compare with; they count as
explained. Read-only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from sqlalchemy import select, union
from sqlalchemy.orm import Session

from vending.balance.engine import balance_minor
from vending.errors import VendingError
from vending.models import (
    Account,
    CentralAccountState,
    LedgerEntry,
    RatedInterval,
    Vend,
)
from vending.money import Currency, Money, MoneyError

# Kinds whose amount needs no further record to be explained.
SELF_EXPLAINED_KINDS = frozenset({"fixed_charge", "debt_recovery"})
KNOWN_KINDS = frozenset(
    {
        "payment",
        "reversal",
        "consumption",
        "adjustment",
        "emergency_credit",
        "emergency_repayment",
    }
    | SELF_EXPLAINED_KINDS
)
CENTRAL_TOP_UP = "central_top_up"


@dataclass
class AccountCheck:
    """One account's figures (minor units) and what does not match, in words."""

    account_number: str
    currency: str
    balance_minor: int = 0
    explained_minor: int = 0
    payments_minor: int = 0
    vends_credited_minor: int = 0
    consumption_minor: int = 0
    rated_minor: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def central_account_ids(session: Session) -> list[int]:
    """Accounts with anything of central balance: a ledger entry, the engine's state or
    a rated interval."""
    ids = union(
        select(LedgerEntry.account_id),
        select(CentralAccountState.account_id),
        select(RatedInterval.account_id),
    ).subquery()
    return sorted(session.scalars(select(ids.c[0])))


def check_all(session: Session) -> Iterator[AccountCheck]:
    """The check of every central account, by account id."""
    for account_id in central_account_ids(session):
        yield check_account(session, session.get_one(Account, account_id))


def check_account(session: Session, account: Account) -> AccountCheck:
    result = AccountCheck(account.account_number, account.currency)
    entries = list(
        session.scalars(
            select(LedgerEntry).where(LedgerEntry.account_id == account.id).order_by(LedgerEntry.id)
        )
    )
    result.balance_minor = balance_minor(session, account.id)
    by_kind: dict[str, list[LedgerEntry]] = {}
    for entry in entries:
        by_kind.setdefault(entry.kind, []).append(entry)
    for kind in sorted(set(by_kind) - KNOWN_KINDS):
        result.problems.append(f"{len(by_kind[kind])} entries of unknown kind {kind!r}")
    explained = _payments(session, account, by_kind, result)
    explained += _consumption(session, account, by_kind, result)
    explained += _emergency(session, account, by_kind, result)
    explained += sum(e.amount_minor for k in SELF_EXPLAINED_KINDS for e in by_kind.get(k, []))
    result.explained_minor = explained
    if result.explained_minor != result.balance_minor:
        result.problems.append(
            f"balance {result.balance_minor} but its causes explain {result.explained_minor}"
        )
    return result


def _payments(
    session: Session, account: Account, by_kind: dict[str, list[LedgerEntry]], result: AccountCheck
) -> int:
    """Payments and reversals against the account's central vends; returns what they
    explain (entries matching a vend)."""
    vends = {
        v.id: v
        for v in session.scalars(select(Vend).where(Vend.account_id == account.id))
        if v.breakdown.get("kind") == CENTRAL_TOP_UP
    }
    credited = {vend_id: _credited_minor(v, result) for vend_id, v in vends.items()}
    result.vends_credited_minor = sum(credited.values())
    explained = 0
    paid: dict[int, int] = {}
    for entry in by_kind.get("payment", []):
        result.payments_minor += entry.amount_minor
        vend_id = _vend_id(entry.reference)
        if vend_id not in vends:
            result.problems.append(f"payment {entry.reference} (entry {entry.id}) has no vend")
        elif vend_id in paid:
            result.problems.append(f"vend {vend_id} is paid twice (entry {entry.id})")
        elif entry.amount_minor != credited[vend_id]:
            result.problems.append(
                f"payment {entry.reference} is {entry.amount_minor}, "
                f"the vend credited {credited[vend_id]}"
            )
        else:
            paid[vend_id] = entry.amount_minor
            explained += entry.amount_minor
    for vend_id in sorted(set(vends) - set(paid)):
        if not any(_vend_id(e.reference) == vend_id for e in by_kind.get("payment", [])):
            result.problems.append(f"vend {vends[vend_id].receipt_number} has no payment entry")
    for entry in by_kind.get("reversal", []):
        vend_id = _vend_id(entry.reference)
        vend = vends.get(vend_id) if vend_id is not None else None
        if vend is None or vend.status != "reversed" or vend_id not in paid:
            result.problems.append(
                f"reversal {entry.reference} (entry {entry.id}) has no reversed vend"
            )
        elif entry.amount_minor != -paid[vend_id]:
            result.problems.append(
                f"reversal {entry.reference} is {entry.amount_minor}, "
                f"the payment was {paid[vend_id]}"
            )
        else:
            explained += entry.amount_minor
    reversed_ids = {_vend_id(e.reference) for e in by_kind.get("reversal", [])}
    for vend_id in sorted(paid):
        if vends[vend_id].status == "reversed" and vend_id not in reversed_ids:
            result.problems.append(
                f"vend {vends[vend_id].receipt_number} is reversed but its payment is not"
            )
    return explained


def _consumption(
    session: Session, account: Account, by_kind: dict[str, list[LedgerEntry]], result: AccountCheck
) -> int:
    """Consumption and adjustment entries against the account's rated intervals."""
    rated = {
        r.id: r
        for r in session.scalars(
            select(RatedInterval).where(RatedInterval.account_id == account.id)
        )
    }
    result.rated_minor = sum(r.charge_minor for r in rated.values())
    booked: dict[int, int] = {}
    explained = 0
    for entry in by_kind.get("consumption", []) + by_kind.get("adjustment", []):
        result.consumption_minor -= entry.amount_minor
        interval_id = _interval_id(entry)
        if interval_id not in rated:
            result.problems.append(
                f"{entry.kind} {entry.reference} (entry {entry.id}) has no rated interval"
            )
            continue
        booked[interval_id] = booked.get(interval_id, 0) + entry.amount_minor
        explained += entry.amount_minor
    for interval_id, interval in sorted(rated.items()):
        if booked.get(interval_id, 0) != -interval.charge_minor:
            result.problems.append(
                f"rated interval {interval_id} charged {interval.charge_minor}, "
                f"the ledger booked {-booked.get(interval_id, 0)}"
            )
    return explained


def _emergency(
    session: Session, account: Account, by_kind: dict[str, list[LedgerEntry]], result: AccountCheck
) -> int:
    lent = sum(e.amount_minor for e in by_kind.get("emergency_credit", []))
    repaid = sum(e.amount_minor for e in by_kind.get("emergency_repayment", []))
    state = session.get(CentralAccountState, account.id)
    outstanding = state.emergency_credit_outstanding_minor if state else 0
    if lent + repaid != outstanding:
        result.problems.append(
            f"emergency credit lent {lent} less repaid {-repaid} is not the "
            f"{outstanding} outstanding"
        )
        return 0
    return lent + repaid


def _credited_minor(vend: Vend, result: AccountCheck) -> int:
    try:
        return Money.parse(
            str(vend.breakdown.get("credited", "")), Currency.of(vend.currency)
        ).minor
    except (MoneyError, VendingError, ValueError):
        result.problems.append(f"vend {vend.receipt_number} has no readable credited amount")
        return 0


def _vend_id(reference: str) -> int | None:
    prefix, _, number = reference.partition(":")
    return int(number) if prefix == "vend" and number.isdigit() else None


def _interval_id(entry: LedgerEntry) -> int | None:
    parts = entry.reference.split(":")
    if entry.kind == "consumption" and len(parts) == 2 and parts[0] == "interval":
        return int(parts[1]) if parts[1].isdigit() else None
    if entry.kind == "adjustment" and len(parts) == 3 and parts[0] == "rerate":
        return int(parts[1]) if parts[1].isdigit() else None
    return None
