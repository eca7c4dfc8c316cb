"""A customer's grade from what gridvend already knows about them.

``vending.grading`` decides a grade from four facts; this module finds those facts for a
customer over the twelve months (365 days) before ``now``, across all their accounts:

- annual consumption: the kWh vended to token-mode meters (reversed vends excluded) plus
  the kWh the balance engine rated for central-balance meters;
- supply voltage: stored on the customer (``supply_voltage_v``);
- late payments: top-ups of a central-balance account made after its balance had run
  out (at or below zero, the account's first entry excepted). A token-mode purchase is
  paid before use and is never late;
- disconnections: the balance engine's ``disconnect`` decisions for their accounts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import ScalarSelect

from vending.errors import VendingError
from vending.grading import Grade, GradingError, GradingPolicy, PaymentRecord, grade_customer
from vending.models import Account, BalanceDecision, Customer, LedgerEntry, RatedInterval, Vend

GRADING_WINDOW = timedelta(days=365)


@dataclass(frozen=True, slots=True)
class GradingFacts:
    annual_kwh: Decimal
    supply_voltage_v: int
    late_payments_12m: int
    disconnections_12m: int


@dataclass(frozen=True, slots=True)
class CustomerGrade:
    grade: Grade
    facts: GradingFacts

    def as_json(self) -> dict[str, object]:
        return {
            "grade": self.grade.label,
            "stars": int(self.grade),
            "annual_kwh": str(self.facts.annual_kwh.quantize(Decimal("0.1"))),
            "supply_voltage_v": self.facts.supply_voltage_v,
            "late_payments_12m": self.facts.late_payments_12m,
            "disconnections_12m": self.facts.disconnections_12m,
        }


def grading_facts(session: Session, customer: Customer, now: datetime) -> GradingFacts:
    """The four grading facts of ``customer`` for the 365 days before ``now``."""
    since = now - GRADING_WINDOW
    accounts = select(Account.id).where(Account.customer_id == customer.id).scalar_subquery()
    vended = session.scalar(
        select(func.coalesce(func.sum(Vend.units_kwh), 0)).where(
            Vend.account_id.in_(accounts),
            Vend.status != "reversed",
            Vend.created_at >= since,
            Vend.created_at <= now,
        )
    )
    rated = session.scalar(
        select(func.coalesce(func.sum(RatedInterval.energy_kwh), 0)).where(
            RatedInterval.account_id.in_(accounts),
            RatedInterval.t_start >= since,
            RatedInterval.t_start < now,
        )
    )
    disconnections = session.scalar(
        select(func.count()).where(
            BalanceDecision.account_id.in_(accounts),
            BalanceDecision.action == "disconnect",
            BalanceDecision.decided_at >= since,
            BalanceDecision.decided_at <= now,
        )
    )
    return GradingFacts(
        annual_kwh=Decimal(str(vended or 0)) + Decimal(str(rated or 0)),
        supply_voltage_v=customer.supply_voltage_v,
        late_payments_12m=_late_payments(session, accounts, since, now),
        disconnections_12m=disconnections or 0,
    )


def _late_payments(
    session: Session, accounts: ScalarSelect[int], since: datetime, now: datetime
) -> int:
    # Each account's balance when the year began, then the running balance through the
    # year: only the year's entries are ordered, however long the account's history.
    opening = (
        select(
            LedgerEntry.account_id,
            func.sum(LedgerEntry.amount_minor).label("balance"),
        )
        .where(LedgerEntry.account_id.in_(accounts), LedgerEntry.created_at < since)
        .group_by(LedgerEntry.account_id)
        .subquery()
    )
    running = (
        select(
            LedgerEntry.kind,
            (
                func.coalesce(opening.c.balance, 0)
                + func.sum(LedgerEntry.amount_minor).over(
                    partition_by=LedgerEntry.account_id, order_by=LedgerEntry.id
                )
                - LedgerEntry.amount_minor
            ).label("balance_before"),
            # The account's very first entry is its opening top-up, never late.
            (
                opening.c.account_id.is_(None)
                & (
                    func.row_number().over(
                        partition_by=LedgerEntry.account_id, order_by=LedgerEntry.id
                    )
                    == 1
                )
            ).label("first_ever"),
        )
        .outerjoin(opening, opening.c.account_id == LedgerEntry.account_id)
        .where(
            LedgerEntry.account_id.in_(accounts),
            LedgerEntry.created_at >= since,
            LedgerEntry.created_at <= now,
        )
        .subquery()
    )
    late = session.scalar(
        select(func.count()).where(
            and_(
                running.c.kind == "payment",
                running.c.balance_before <= 0,
                running.c.first_ever.is_(False),
            )
        )
    )
    return late or 0


def grade_of_customer(
    session: Session, customer: Customer, now: datetime, policy: GradingPolicy | None
) -> CustomerGrade:
    """The customer's grade and the facts it was decided on; VendingError
    ``invalid_grading`` when a stored fact is out of range (a negative voltage)."""
    facts = grading_facts(session, customer, now)
    try:
        grade = grade_customer(
            facts.annual_kwh,
            facts.supply_voltage_v,
            PaymentRecord(facts.late_payments_12m, facts.disconnections_12m),
            policy,
        )
    except GradingError as exc:
        raise VendingError("invalid_grading", str(exc)) from None
    return CustomerGrade(grade, facts)
