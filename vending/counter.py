"""The vend: one payment becomes one priced breakdown and one token, in one transaction.

``vend`` runs inside the caller's transaction and either stores everything (the vend,
the account's new pricing state, the TID cursor, the vending point's cash, the audit
entry) or raises :class:`VendingError` having stored nothing. A retried request with the
same ``(channel, reference)`` returns the vend already made; with a different body it is
refused, so one payment never yields two tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from headend.audit import AuditSink
from headend.interface import (
    SUMMARY_COLUMNS,
    MeterSummary,
    find_meter,
    meter_number_column,
    normalise_meter_number,
)
from protocols.sts import CreditType, StsError
from vending.accounts import (
    load_tariff,
    newest_version_id_of,
    pricing_state,
    write_pricing_state,
)
from vending.debt import recover_from_purchase
from vending.driver_statements import DriverStatement
from vending.errors import VendingError
from vending.key_changes import current_key_ref, hand_out_with_vend
from vending.keystore import KeyStoreError
from vending.models import (
    Account,
    AccountMeter,
    Customer,
    LedgerEntry,
    MeterTidCursor,
    TariffRecord,
    Vend,
    VendingPoint,
)
from vending.money import Currency, Money, MoneyError
from vending.pricing import (
    AmountBelowMinimum,
    PricingError,
    VendAccount,
    VendBreakdown,
    minimum_tender,
    price_vend,
)
from vending.reversals import account_state
from vending.security_module import IssuedToken, SecurityModule
from vending.tariffs import Tariff, TariffError
from vending.tids import tid_after

if TYPE_CHECKING:  # shifts imports this module
    from vending.shifts import OpenShift

VENDABLE_LIFECYCLES = ("installed", "commissioned", "active")


class PaymentMethod(StrEnum):
    CASH = "cash"
    CARD = "card"
    MOBILE_MONEY = "mobile_money"
    BANK = "bank"


@dataclass(frozen=True, slots=True)
class VendLimits:
    """The largest single vend, in minor units (the smallest comes from the tariff)."""

    maximum_minor: int = 10_000_000


@dataclass(frozen=True, slots=True)
class VendRequest:
    meter_number: str
    amount: Decimal
    payment_method: PaymentMethod
    channel: str
    reference: str
    operator: str
    shift_id: int | None = None
    vending_point_id: int | None = None
    # The seller has handed out (will print) a pending key change's tokens: see
    # vending.key_changes. Without it a vend to such a meter is refused.
    key_change_acknowledged: bool = False


@dataclass(frozen=True, slots=True)
class Quote:
    """What the clerk sees before taking money: who, which meter, the limits, the debt."""

    meter: MeterSummary
    account: Account
    customer: Customer
    tariff: Tariff
    minimum: Money
    maximum: Money
    debt: Money


def lookup(session: Session, meter_number: str, now: datetime, limits: VendLimits) -> Quote:
    """The pre-vend lookup; no side effect. VendingError as for :func:`vend`."""
    meter, account = _meter_and_account(session, meter_number, lock=False)
    tariff = load_tariff(session, account.tariff_code)
    state = pricing_state(account, tariff.currency)
    try:
        minimum = minimum_tender(tariff, state, now)
    except (PricingError, TariffError) as exc:
        raise VendingError("tariff_problem", str(exc)) from None
    customer = session.get_one(Customer, account.customer_id)
    return Quote(
        meter=meter,
        account=account,
        customer=customer,
        tariff=tariff,
        minimum=minimum,
        maximum=Money(limits.maximum_minor, tariff.currency),
        debt=state.debt,
    )


def vend(
    session: Session,
    request: VendRequest,
    *,
    security_module: SecurityModule,
    audit: AuditSink,
    now: datetime,
    limits: VendLimits = VendLimits(),
    locked: LockedAccount | None = None,
    shift: OpenShift | None = None,
    reversible_here: bool = False,
) -> Vend:
    """Sell ``request.amount`` of credit for a meter; see the module docstring.

    A token meter with a pending key change answers VendingError key_change_required
    (with its tokens) unless ``request.key_change_acknowledged``; then the vend completes
    the key change and its breakdown carries ``key_change_tokens`` (vending.key_changes).

    ``locked``: the meter and account :func:`lock_for_vend` returned for
    ``request.meter_number`` earlier in this transaction, so they are not looked up again;
    ``shift``: the open shift ``request.shift_id`` names, with its point, as the caller
    read it in this transaction (required with a ``shift_id``).
    ``reversible_here``: keep the account's state before the vend on the vend's row, for
    ``vending.reversals.reverse_vend`` (a counter vend; a channel reverses its own).
    """
    earlier = _find_by_reference(session, request.channel, request.reference)
    if earlier is not None:
        return _same_request_or_conflict(session, earlier, request)
    if locked is None:
        locked = lock_for_vend(session, request.meter_number)
    meter, account = locked.meter, locked.account
    account_before = account_state(account) if reversible_here else None
    if account.last_purchase_at is not None and account.last_purchase_at > now:
        # A concurrent vend committed while this one waited for the account: this sale
        # happens after it.
        now = account.last_purchase_at
    tariff = load_tariff(
        session, account.tariff_code, newest_version_id=locked.newest_tariff_version
    )
    tendered = _tendered(request.amount, tariff, limits)
    point = _check_shift_and_point(session, request, tendered, shift)
    state = pricing_state(account, tariff.currency)
    if meter.prepaid_mode == "central":
        sale = _central_top_up(tendered, state)
    else:
        meter, key_change_tokens = hand_out_with_vend(
            session,
            meter,
            acknowledged=request.key_change_acknowledged,
            operator=request.operator,
            channel=request.channel,
            reference=request.reference,
            audit=audit,
            now=now,
        )
        sale = _token_sale(session, meter, tariff, tendered, state, security_module, now)
        if key_change_tokens:
            # Printed before the credit token, which is made under the new key.
            sale = replace(sale, document={**sale.document, "key_change_tokens": key_change_tokens})
    token = sale.token
    values: dict[str, Any] = {
        # Unique until the number is known (a vend without a point: once inserted).
        "receipt_number": f"pending-{request.channel}-{request.reference}"[:32],
        "channel": request.channel,
        "reference": request.reference,
        "account_id": account.id,
        "meter_id": meter.id,
        "shift_id": request.shift_id,
        "vending_point_id": point.id if point else None,
        "operator": request.operator,
        "payment_method": request.payment_method.value,
        "currency": tariff.currency.code,
        "tendered_minor": tendered.minor,
        "units_kwh": sale.units_kwh,
        "breakdown": sale.document,
        "token_digits": token.digits if token else None,
        "tid": token.tid if token else None,
        "status": "issued",
        "created_at": now,
        "reprints": 0,
        "reversed_at": None,
        "reversed_by": None,
        "reversal_reason": None,
        "account_before": account_before,
    }
    # The writes. The vending point's row is shared by every clerk at that point: it is
    # locked here, by its first write, and not while pricing and making the token.
    if point is not None:
        # The point's receipt count comes back with the cash: the number goes in with the
        # vend's row.
        count = _take_cash(session, point, tendered.minor)
        values["receipt_number"] = _receipt_number(point.code, count)
        record = _insert_vend(session, values)
    else:
        record = _insert_vend(session, values, number_after_with_prefix=request.channel)
    if sale.tid_write is not None:
        _write_tid(session, sale.tid_write)
    write_pricing_state(session, account, sale.account_after)
    if sale.credited is not None:
        _book_payment(session, account, sale.credited, record, now)
    audit.record(
        session,
        actor=request.operator,
        action="vend",
        subject=f"meter:{meter.meter_number}",
        detail={
            "receipt": record.receipt_number,
            "amount": str(tendered.to_decimal()),
            "currency": tariff.currency.code,
            "units_kwh": str(sale.units_kwh),
            "tid": record.tid,
            "channel": request.channel,
        },
    )
    return record


# The vend's writes are Core statements: the ORM's unit of work cost more than the rest of
# the transaction's statements together. The ones every vend runs go to the driver
# directly (vending.driver_statements). The objects the caller holds are kept in step
# (set_committed_value, a persistent Vend), so nothing is left pending for a flush.
_vends = cast(Table, Vend.__table__)
_points = cast(Table, VendingPoint.__table__)
_tid_cursors = cast(Table, MeterTidCursor.__table__)
_INSERT_VEND = DriverStatement(
    insert(_vends).returning(_vends.c.id),
    columns=[c.key for c in _vends.columns if c.key != "id"],
)
_SET_RECEIPT = (
    update(_vends)
    .where(_vends.c.id == bindparam("vend_id"))
    .values(receipt_number=bindparam("new_receipt_number"))
)
_TAKE_CASH = DriverStatement(
    update(_points)
    .where(
        _points.c.id == bindparam("point_id"),
        _points.c.active.is_(True),
        _points.c.outstanding_minor + bindparam("amount_minor") <= _points.c.credit_limit_minor,
    )
    .values(
        outstanding_minor=_points.c.outstanding_minor + bindparam("amount_minor"),
        receipts_issued=_points.c.receipts_issued + 1,
    )
    .returning(_points.c.receipts_issued)
)
_SET_TID = DriverStatement(
    update(_tid_cursors)
    .where(_tid_cursors.c.meter_id == bindparam("cursor_meter_id"))
    .values(
        supply_group_code=bindparam("new_supply_group_code"),
        key_revision=bindparam("new_key_revision"),
        base_date=bindparam("new_base_date"),
        last_tid=bindparam("new_last_tid"),
    )
)


def _receipt_number(prefix: str, count: int) -> str:
    return f"{prefix}-{count:010d}"


def _insert_vend(
    session: Session, values: dict[str, Any], *, number_after_with_prefix: str | None = None
) -> Vend:
    """Insert the vend and return it as a persistent object of ``session``; with
    ``number_after_with_prefix`` (a vend without a vending point) its receipt number is
    made from that prefix and the vend's id, once inserted. VendingError
    concurrent_duplicate."""
    # Anything the caller left pending goes first (Core statements do not flush it).
    session.flush()
    try:
        vend_id = int(_INSERT_VEND.scalar(session, values))
    except IntegrityError:
        # A concurrent request with the same reference won the race; it will be found
        # by the retry, which returns its vend.
        raise VendingError(
            "concurrent_duplicate", "the same request is being processed; retry to get its answer"
        ) from None
    if number_after_with_prefix is not None:
        values = {**values, "receipt_number": _receipt_number(number_after_with_prefix, vend_id)}
        session.connection().execute(
            _SET_RECEIPT, {"vend_id": vend_id, "new_receipt_number": values["receipt_number"]}
        )
    record = Vend(**{**values, "id": vend_id})
    # As though loaded from the row just written.
    make_transient_to_detached(record)
    session.add(record)
    session.info.setdefault(_MADE_HERE, set()).add(vend_id)
    return record


_MADE_HERE = "gridvend_vends_made"


def made_in(session: Session, record: Vend) -> bool:
    """Whether ``record`` was inserted through ``session`` (not an earlier request's vend
    that ``vend`` answered for a repeated reference)."""
    return record.id in session.info.get(_MADE_HERE, ())


def _take_cash(session: Session, point: _Point, amount_minor: int) -> int:
    """Add the cash to the point's outstanding amount if the point is still active and
    under its credit limit (checked again here, under the row's lock, since the first
    check read it unlocked), and count the receipt: the point's new receipt count.
    VendingError vending_point_inactive, vending_point_limit."""
    count = _TAKE_CASH.scalar(session, {"point_id": point.id, "amount_minor": amount_minor})
    if count is None:
        row = session.connection().execute(_READ_POINT, {"point_id": point.id}).first()
        _refuse_point(row, amount_minor)
        raise VendingError("vending_point_limit", "the vending point cannot take this cash")
    held = session.identity_map.get(identity_key(VendingPoint, point.id))
    if held is not None:
        session.expire(held, ["outstanding_minor", "receipts_issued"])
    return int(count)


@dataclass(frozen=True, slots=True)
class LockedAccount:
    """A vendable meter and its active account, locked for a vend in this transaction;
    the customer's name and the tariff's time zone when read with them (for the
    receipt)."""

    meter: MeterSummary
    account: Account
    customer_name: str | None = None
    timezone: str | None = None
    newest_tariff_version: int | None = None


def lock_for_vend(session: Session, meter_number: str) -> LockedAccount:
    """The meter and its account, the account locked (and re-read) for the vend to come.

    VendingError invalid_meter_number, meter_not_found, meter_not_vendable,
    meter_not_on_account, account_closed (as :func:`vend`).
    """
    try:
        number = normalise_meter_number(meter_number)
    except ValueError as exc:
        raise VendingError("invalid_meter_number", str(exc)) from None
    # The usual case in one query: a vendable meter on an active account.
    row = _LOCK_ACCOUNT_BY_NUMBER.first(session, {"locked_number": number})
    if row is not None:
        customer_name, timezone, newest_tariff_version, *rest = row
        account_row, meter = rest[:_ACCOUNT_WIDTH], MeterSummary(*rest[_ACCOUNT_WIDTH:])
        if meter.lifecycle in VENDABLE_LIFECYCLES and account_row[_ACCOUNT_STATUS] == "active":
            account = _held_account(session, dict(zip(_ACCOUNT_KEYS, account_row, strict=True)))
            return LockedAccount(meter, account, customer_name, timezone, newest_tariff_version)
    # Otherwise the reason, step by step.
    meter, account = _meter_and_account(session, meter_number, lock=True)
    return LockedAccount(meter, account)


def _held_account(session: Session, values: dict[str, Any]) -> Account:
    """The account as a persistent object of ``session`` holding ``values`` (its row, read
    under the lock): the object the session already holds, refreshed, or a new one. The
    lock's query reads columns, not an entity: the ORM's loading cost more than the rest
    of the query."""
    held = session.identity_map.get(identity_key(Account, values["id"]))
    if held is not None:
        # As populate_existing would: what the row says now, loaded (not a change).
        for name, value in values.items():
            set_committed_value(held, name, value)
        return cast(Account, held)
    account = Account(**values)
    make_transient_to_detached(account)
    session.add(account)
    return account


def _find_by_reference(session: Session, channel: str, reference: str) -> Vend | None:
    # Almost always there is none: ask for the id alone and load the vend only if found.
    vend_id = _BY_REFERENCE.scalar(session, {"ref_channel": channel, "ref": reference})
    return None if vend_id is None else session.get(Vend, vend_id)


_BY_REFERENCE = DriverStatement(
    select(Vend.__table__.c.id).where(
        Vend.__table__.c.channel == bindparam("ref_channel"),
        Vend.__table__.c.reference == bindparam("ref"),
    )
)


def _same_request_or_conflict(session: Session, earlier: Vend, request: VendRequest) -> Vend:
    meter = find_meter(session, meter_id=earlier.meter_id)
    same_meter = meter is not None and meter.meter_number == _normalised(request.meter_number)
    try:
        tendered = Money.parse(request.amount, Currency.of(earlier.currency))
    except MoneyError as exc:
        raise VendingError("invalid_amount", str(exc)) from None
    same_amount = tendered.minor == earlier.tendered_minor
    if same_meter and same_amount:
        return earlier
    raise VendingError(
        "reference_conflict",
        f"reference {request.reference!r} was already used for another vend on this channel",
    )


def _normalised(meter_number: str) -> str | None:
    try:
        return normalise_meter_number(meter_number)
    except ValueError:
        return None


def _meter_and_account(
    session: Session, meter_number: str, *, lock: bool
) -> tuple[MeterSummary, Account]:
    try:
        meter = find_meter(session, meter_number=meter_number)
    except ValueError as exc:
        raise VendingError("invalid_meter_number", str(exc)) from None
    if meter is None:
        raise VendingError("meter_not_found", f"meter {meter_number} is not registered")
    if meter.lifecycle not in VENDABLE_LIFECYCLES:
        raise VendingError(
            "meter_not_vendable",
            f"meter {meter_number} is {meter.lifecycle}: it cannot be sold credit",
        )
    query = _LOCK_LINKED_ACCOUNT if lock else _LINKED_ACCOUNT
    account: Account | None = session.scalar(query, {"link_meter_id": meter.id})
    if account is None:
        raise VendingError("meter_not_on_account", f"meter {meter_number} is on no account")
    if account.status != "active":
        raise VendingError("account_closed", f"the account of meter {meter_number} is not active")
    return meter, account


# The account through the meter's open link, in one query (a link always has its account:
# foreign key).
_LINKED_ACCOUNT = select(Account).join(
    AccountMeter,
    (AccountMeter.account_id == Account.id)
    & (AccountMeter.meter_id == bindparam("link_meter_id"))
    & AccountMeter.unlinked_at.is_(None),
)
# Re-read under the lock even if the session already holds the account; only the account
# row is locked.
_LOCK_LINKED_ACCOUNT = _LINKED_ACCOUNT.with_for_update(of=Account).execution_options(
    populate_existing=True
)
# The meter (by number) with its account, locked, in one query, with what the receipt
# prints of the customer and the tariff, and the tariff's newest version (load_tariff).
_accounts = cast(Table, Account.__table__)
_ACCOUNT_KEYS = tuple(column.key for column in _accounts.columns)
_ACCOUNT_WIDTH = len(_ACCOUNT_KEYS)
_ACCOUNT_STATUS = _ACCOUNT_KEYS.index("status")
_LOCK_ACCOUNT_BY_NUMBER = DriverStatement(
    select(
        Customer.name,
        TariffRecord.timezone,
        newest_version_id_of(Account.tariff_code),
        *_accounts.columns,
        *SUMMARY_COLUMNS,
    )
    .join(
        AccountMeter,
        (AccountMeter.account_id == Account.id) & AccountMeter.unlinked_at.is_(None),
    )
    .join(Customer, Customer.id == Account.customer_id)
    .outerjoin(TariffRecord, TariffRecord.code == Account.tariff_code)
    .join_from(AccountMeter, SUMMARY_COLUMNS[0].table, SUMMARY_COLUMNS[0] == AccountMeter.meter_id)
    .where(meter_number_column == bindparam("locked_number"))
    .with_for_update(of=_accounts)
)


def _tendered(amount: Decimal, tariff: Tariff, limits: VendLimits) -> Money:
    try:
        tendered = Money.parse(amount, tariff.currency)
    except MoneyError as exc:
        raise VendingError("invalid_amount", str(exc)) from None
    if tendered.minor <= 0:
        raise VendingError("invalid_amount", "the amount must be positive")
    if tendered.minor > limits.maximum_minor:
        maximum = Money(limits.maximum_minor, tariff.currency)
        raise VendingError(
            "amount_above_maximum", f"{tendered} is above the maximum vend of {maximum}"
        )
    return tendered


@dataclass(frozen=True, slots=True)
class _Point:
    """The vending point a vend takes cash for."""

    id: int
    code: str


def _check_shift_and_point(
    session: Session, request: VendRequest, tendered: Money, shift: OpenShift | None
) -> _Point | None:
    row: Any
    if request.shift_id is not None:
        if shift is None or shift.id != request.shift_id:
            raise ValueError("a vend on a shift is given the open shift it names")
        if shift.clerk != request.operator:
            raise VendingError("no_open_shift", "open a shift before vending")
        row = _PointRow(
            shift.point_id,
            shift.point_code,
            shift.point_active,
            shift.point_outstanding_minor,
            shift.point_credit_limit_minor,
        )
    elif request.vending_point_id is not None:
        row = (
            session.connection()
            .execute(_READ_POINT, {"point_id": request.vending_point_id})
            .first()
        )
    else:
        return None
    _refuse_point(row, tendered.minor)
    assert row is not None
    return _Point(row.id, row.code)


class _PointRow(NamedTuple):
    """A vending point as _READ_POINT reads it."""

    id: int
    code: str
    active: bool
    outstanding_minor: int
    credit_limit_minor: int


def _refuse_point(row: Any, amount_minor: int) -> None:
    """VendingError if the point (a _READ_POINT row) cannot take ``amount_minor`` more."""
    if row is None or not row.active:
        raise VendingError("vending_point_inactive", "the vending point is not active")
    if row.outstanding_minor + amount_minor > row.credit_limit_minor:
        raise VendingError(
            "vending_point_limit",
            f"vending point {row.code} has reached its credit limit: bank the cash first",
        )


_READ_POINT = select(
    _points.c.id,
    _points.c.code,
    _points.c.active,
    _points.c.outstanding_minor,
    _points.c.credit_limit_minor,
).where(_points.c.id == bindparam("point_id"))


def _credit_token(
    session: Session,
    meter: MeterSummary,
    breakdown: VendBreakdown,
    security_module: SecurityModule,
    now: datetime,
) -> tuple[IssuedToken, _TidWrite]:
    ref = current_key_ref(meter)
    try:
        attributes = security_module.key_attributes(ref)
        cursor = _LOCK_TID_CURSOR.first(session, {"cursor_meter_id": meter.id})
        tid = tid_after(
            None if cursor is None else (cursor[0], cursor[1], cursor[2], cursor[3]),
            ref,
            attributes,
            now,
        )
        amount = int(breakdown.units_kwh * 10)
        token = security_module.credit_token(
            ref, credit_type=CreditType.ELECTRICITY, amount=amount, tid=tid
        )
    except KeyStoreError as exc:
        raise VendingError(exc.code, str(exc)) from None
    except StsError as exc:
        raise VendingError("token_refused", str(exc)) from None
    cursor_values = {
        "supply_group_code": ref.supply_group_code,
        "key_revision": ref.key_revision,
        "base_date": int(attributes.base_date),
        "last_tid": tid,
    }
    return token, _TidWrite(meter.id, cursor is not None, cursor_values)


@dataclass(frozen=True, slots=True)
class _TidWrite:
    """The meter's TID cursor after the vend (written with the vend's other writes)."""

    meter_id: int
    exists: bool
    values: dict[str, Any]


def _write_tid(session: Session, write: _TidWrite) -> None:
    if write.exists:
        _SET_TID.execute(
            session,
            {"cursor_meter_id": write.meter_id, **{f"new_{k}": v for k, v in write.values.items()}},
        )
    else:
        session.connection().execute(
            insert(_tid_cursors), {"meter_id": write.meter_id, **write.values}
        )


# The cursor is locked when read: the account's lock already keeps two vends for one meter
# apart, and this keeps anything else that issues TIDs for the meter out too.
_LOCK_TID_CURSOR = DriverStatement(
    select(
        _tid_cursors.c.supply_group_code,
        _tid_cursors.c.key_revision,
        _tid_cursors.c.base_date,
        _tid_cursors.c.last_tid,
    )
    .where(_tid_cursors.c.meter_id == bindparam("cursor_meter_id"))
    .with_for_update()
)


@dataclass(frozen=True, slots=True)
class _Sale:
    """What a vend sells: units and a token (token meters) or a balance credit (central)."""

    units_kwh: Decimal
    document: dict[str, Any]
    account_after: VendAccount
    token: IssuedToken | None = None
    credited: Money | None = None
    tid_write: _TidWrite | None = None


def _token_sale(
    session: Session,
    meter: MeterSummary,
    tariff: Tariff,
    tendered: Money,
    state: VendAccount,
    security_module: SecurityModule,
    now: datetime,
) -> _Sale:
    try:
        breakdown = price_vend(tariff, tendered, state, now)
    except AmountBelowMinimum as exc:
        raise VendingError(
            "amount_below_minimum", str(exc), minimum=str(exc.minimum.to_decimal())
        ) from None
    except (PricingError, TariffError, MoneyError) as exc:
        raise VendingError("pricing_refused", str(exc)) from None
    token = tid_write = None
    if breakdown.units_kwh > 0:
        token, tid_write = _credit_token(session, meter, breakdown, security_module, now)
    return _Sale(
        breakdown.units_kwh,
        breakdown_document(breakdown),
        breakdown.account_after,
        token,
        tid_write=tid_write,
    )


def _central_top_up(tendered: Money, state: VendAccount) -> _Sale:
    """Central-balance meters: the debt share is taken, the rest credits the balance;
    energy and fixed charges are rated later by the balance engine."""
    recovered = recover_from_purchase(tendered, state.debt, state.debt_recovery)
    credited = tendered - recovered
    zero = str(Money.zero(tendered.currency).to_decimal())
    document = {
        "kind": "central_top_up",
        "tendered": str(tendered.to_decimal()),
        "carry_in": zero,
        "debt_recovered": str(recovered.to_decimal()),
        "fixed": zero,
        "energy": zero,
        "levies": zero,
        "tax": zero,
        "carry_out": zero,
        "credited": str(credited.to_decimal()),
        "units_kwh": "0",
        "free_units_kwh": "0",
        "lines": [],
    }
    after = replace(state, debt=state.debt - recovered)
    return _Sale(Decimal(0), document, after, credited=credited)


def _book_payment(
    session: Session, account: Account, credited: Money, record: Vend, now: datetime
) -> None:
    """Central-balance meters: the money (less the debt share) goes to the balance."""
    session.add(
        LedgerEntry(
            account_id=account.id,
            kind="payment",
            amount_minor=credited.minor,
            reference=f"vend:{record.id}",
            detail={"receipt": record.receipt_number},
            created_at=now,
        )
    )


def breakdown_document(breakdown: VendBreakdown) -> dict[str, Any]:
    """The breakdown as stored with the vend and shown on receipts (major units, text)."""

    def money(value: Money) -> str:
        return str(value.to_decimal())

    return {
        "tariff_code": breakdown.tariff_code,
        "tariff_effective_from": breakdown.effective_from.isoformat(),
        "tendered": money(breakdown.tendered),
        "carry_in": money(breakdown.carry_in),
        "debt_recovered": money(breakdown.debt_recovered),
        "fixed": money(breakdown.fixed_amount),
        "energy": money(breakdown.energy_amount),
        "levies": money(breakdown.levy_amount),
        "tax": money(breakdown.tax_amount),
        "carry_out": money(breakdown.carry_out),
        "units_kwh": str(breakdown.units_kwh),
        "free_units_kwh": str(breakdown.free_units_kwh),
        "lines": [
            {
                "kind": str(line.kind),
                "label": line.label,
                "amount": money(line.amount),
                "kwh": None
                if line.kwh is None
                else str(Decimal(line.kwh.numerator) / line.kwh.denominator),
                "rate": None if line.rate is None else str(line.rate),
            }
            for line in breakdown.charges.lines
        ],
    }
