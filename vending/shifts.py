"""Vending points, clerks' shifts and the cash-up at the end of a shift.

A clerk opens a shift at a vending point with a float (the change in the drawer), vends,
and closes it by declaring the cash counted. The cash-up compares that with what the
drawer should hold: float + cash vends - cash given back for vends reversed in the shift.
A vending point's ``outstanding_minor`` is cash taken and not yet banked; the vend stops
when it would pass the point's credit limit, and banking resets it.

Every function works inside the caller's transaction and raises VendingError (nothing
stored) for bad input. Money arguments are major-unit Decimals in the point's currency.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from vending.counter import PaymentMethod
from vending.driver_statements import DriverStatement
from vending.errors import VendingError
from vending.models import Shift, Vend, VendingPoint
from vending.models_counter import VendingPointBanking
from vending.money import Currency, Money, MoneyError

POINT_CODE_PATTERN = r"^[A-Z0-9][A-Z0-9_-]{0,15}$"


def parse_money(amount: Decimal | str, currency: Currency, *, allow_zero: bool = True) -> Money:
    """An exact amount in ``currency``; VendingError invalid_amount when it is not a
    number, finer than the minor unit, negative (or zero unless ``allow_zero``)."""
    try:
        money = Money.parse(amount, currency)
    except MoneyError as exc:
        raise VendingError("invalid_amount", str(exc)) from None
    if money.minor < 0 or (money.minor == 0 and not allow_zero):
        raise VendingError("invalid_amount", f"the amount must be positive, got {amount}")
    return money


def currency_of(code: str) -> Currency:
    try:
        return Currency.of(code)
    except MoneyError as exc:
        raise VendingError("invalid_currency", str(exc)) from None


def create_vending_point(
    session: Session, *, code: str, name: str, currency: str, credit_limit: Decimal
) -> VendingPoint:
    """A new, active vending point; VendingError vending_point_exists, invalid_amount."""
    money = parse_money(credit_limit, currency_of(currency))
    if session.scalar(select(VendingPoint.id).where(VendingPoint.code == code)) is not None:
        raise VendingError("vending_point_exists", f"vending point {code} already exists")
    point = VendingPoint(
        code=code,
        name=name,
        currency=money.currency.code,
        credit_limit_minor=money.minor,
        outstanding_minor=0,
        active=True,
    )
    session.add(point)
    session.flush()
    return point


def point_by_code(session: Session, code: str, *, lock: bool = False) -> VendingPoint:
    query = select(VendingPoint).where(VendingPoint.code == code)
    if lock:
        query = query.with_for_update()
    point = session.scalar(query)
    if point is None:
        raise VendingError("vending_point_not_found", f"no vending point {code!r}")
    return point


def bank_cash(
    session: Session, code: str, *, reference: str, actor: str, now: datetime
) -> VendingPointBanking:
    """Record that the point's outstanding cash went to the bank, and reset it to zero.

    VendingError vending_point_not_found, nothing_to_bank.
    """
    point = point_by_code(session, code, lock=True)
    if point.outstanding_minor <= 0:
        raise VendingError("nothing_to_bank", f"vending point {code} has no cash outstanding")
    banking = VendingPointBanking(
        vending_point_id=point.id,
        amount_minor=point.outstanding_minor,
        reference=reference,
        banked_at=now,
        banked_by=actor,
    )
    point.outstanding_minor = 0
    session.add(banking)
    session.flush()
    return banking


def open_shift(
    session: Session, *, clerk: str, point_code: str, opening_float: Decimal, now: datetime
) -> Shift:
    """Open ``clerk``'s shift at a vending point with a float in the point's currency.

    VendingError vending_point_not_found, vending_point_inactive, invalid_amount,
    shift_already_open (a clerk has at most one open shift).
    """
    point = point_by_code(session, point_code)
    if not point.active:
        raise VendingError("vending_point_inactive", f"vending point {point_code} is not active")
    money = parse_money(opening_float, currency_of(point.currency))
    if current_shift(session, clerk) is not None:
        raise VendingError("shift_already_open", f"{clerk} already has an open shift")
    shift = Shift(
        vending_point_id=point.id,
        clerk=clerk,
        opened_at=now,
        opening_float_minor=money.minor,
    )
    session.add(shift)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        # Two opens raced; the unique index on open shifts let one through.
        raise VendingError("shift_already_open", f"{clerk} already has an open shift") from None
    return shift


def current_shift(session: Session, clerk: str) -> Shift | None:
    return session.scalar(_OPEN_SHIFT, {"shift_clerk": clerk})


@dataclass(frozen=True, slots=True)
class OpenShift:
    """What a vend needs of a clerk's open shift: its id and its vending point as read."""

    id: int
    clerk: str
    point_id: int
    point_code: str
    point_name: str
    point_active: bool
    point_outstanding_minor: int
    point_credit_limit_minor: int


def current_shift_point(session: Session, clerk: str) -> OpenShift | None:
    """``clerk``'s open shift with its point, in one query (no objects loaded)."""
    row = _OPEN_SHIFT_POINT.first(session, {"shift_clerk": clerk})
    return None if row is None else OpenShift(*row)


# Built once: every counter vend asks (building the expression cost more than running it).
_IS_OPEN = (Shift.clerk == bindparam("shift_clerk"), Shift.closed_at.is_(None))
_OPEN_SHIFT = select(Shift).where(*_IS_OPEN)
_OPEN_SHIFT_POINT = DriverStatement(
    select(
        Shift.id,
        Shift.clerk,
        VendingPoint.id,
        VendingPoint.code,
        VendingPoint.name,
        VendingPoint.active,
        VendingPoint.outstanding_minor,
        VendingPoint.credit_limit_minor,
    )
    .join(VendingPoint, VendingPoint.id == Shift.vending_point_id)
    .where(*_IS_OPEN)
)


@dataclass(frozen=True, slots=True)
class MethodTotals:
    """Vends of one payment method in a shift: issued and reversed, counts and money."""

    method: str
    count: int
    amount: Money
    reversed_count: int
    reversed_amount: Money

    @property
    def net(self) -> Money:
        return self.amount - self.reversed_amount


@dataclass(frozen=True, slots=True)
class CashUp:
    """The end-of-shift report: what the drawer should hold against what was counted.

    ``expected_cash`` = float + cash vends - cash vends reversed; ``variance`` = declared
    - expected (negative: cash short). ``declared_cash`` and ``variance`` are None for a
    shift still open (an interim report).
    """

    shift_id: int
    clerk: str
    point_code: str
    point_name: str
    opened_at: datetime
    closed_at: datetime | None
    opening_float: Money
    by_method: tuple[MethodTotals, ...]
    expected_cash: Money
    declared_cash: Money | None
    variance: Money | None

    @property
    def vend_count(self) -> int:
        return sum(m.count for m in self.by_method)

    @property
    def net_takings(self) -> Money:
        return sum((m.net for m in self.by_method), Money.zero(self.opening_float.currency))


def cash_up(session: Session, shift: Shift) -> CashUp:
    """The cash-up report of ``shift`` (open or closed)."""
    point = session.get_one(VendingPoint, shift.vending_point_id)
    currency = currency_of(point.currency)
    zero = Money.zero(currency)
    rows = session.execute(
        select(Vend.payment_method, Vend.status, Vend.tendered_minor).where(
            Vend.shift_id == shift.id
        )
    ).all()
    totals: dict[str, list[int]] = {m.value: [0, 0, 0, 0] for m in PaymentMethod}
    for method, status, minor in rows:
        acc = totals.setdefault(method, [0, 0, 0, 0])
        acc[0] += 1
        acc[1] += minor
        if status == "reversed":
            acc[2] += 1
            acc[3] += minor
    by_method = tuple(
        MethodTotals(
            method=method,
            count=acc[0],
            amount=Money(acc[1], currency),
            reversed_count=acc[2],
            reversed_amount=Money(acc[3], currency),
        )
        for method, acc in totals.items()
    )
    cash = next((m.net for m in by_method if m.method == PaymentMethod.CASH.value), zero)
    expected = Money(shift.opening_float_minor, currency) + cash
    declared = (
        None if shift.declared_cash_minor is None else Money(shift.declared_cash_minor, currency)
    )
    return CashUp(
        shift_id=shift.id,
        clerk=shift.clerk,
        point_code=point.code,
        point_name=point.name,
        opened_at=shift.opened_at,
        closed_at=shift.closed_at,
        opening_float=Money(shift.opening_float_minor, currency),
        by_method=by_method,
        expected_cash=expected,
        declared_cash=declared,
        variance=None if declared is None else declared - expected,
    )


def close_shift(session: Session, *, clerk: str, declared_cash: Decimal, now: datetime) -> CashUp:
    """Close ``clerk``'s open shift with the cash counted in the drawer; the cash-up.

    VendingError no_open_shift, invalid_amount.
    """
    shift = session.scalar(
        select(Shift).where(Shift.clerk == clerk, Shift.closed_at.is_(None)).with_for_update()
    )
    if shift is None:
        raise VendingError("no_open_shift", f"{clerk} has no open shift to close")
    point = session.get_one(VendingPoint, shift.vending_point_id)
    declared = parse_money(declared_cash, currency_of(point.currency))
    report = cash_up(session, shift)
    shift.closed_at = now
    shift.declared_cash_minor = declared.minor
    shift.expected_cash_minor = report.expected_cash.minor
    session.flush()
    return cash_up(session, shift)
