"""REST API of the clerk counter under /api/vending: customers, accounts, tariffs,
vending points, shifts, the pre-vend lookup, vends, receipts, reprints, reversals and
sales reports.

Every error answers ``{"detail": {"code", "message"}}`` with a stable code (see
docs/vending.md); a refused request has stored nothing. Request bodies are parsed here,
not by FastAPI, so that a bad field answers a specific code (``invalid_amount`` for an
amount that is not a number) instead of FastAPI's generic validation list.

No `from __future__ import annotations` here: FastAPI resolves the route signatures.
"""

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import bindparam, func, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from headend.audit import AuditSink
from headend.interface import find_meter
from vending.accounts import (
    NewAccount,
    NewCustomer,
    add_customer,
    link_meter,
    load_tariff,
    open_account,
    open_link,
    save_tariff,
)
from vending.counter import (
    LockedAccount,
    PaymentMethod,
    Quote,
    VendLimits,
    VendRequest,
    lock_for_vend,
    lookup,
    made_in,
    vend,
)
from vending.customer_grades import grade_of_customer
from vending.errors import VendingError
from vending.grading import GradingPolicy
from vending.key_change_views import pending_key_change_json
from vending.lanes import ThreadLane, lane_size_for
from vending.models import (
    Account,
    AccountMeter,
    Customer,
    LedgerEntry,
    Notification,
    Shift,
    TariffRecord,
    TariffVersionRecord,
    Vend,
    VendingPoint,
)
from vending.receipts import Receipt, ReceiptParts, build_receipt, render_html, render_text
from vending.reports import daily_sales, zone_or_error
from vending.reversals import (
    AcceptanceCheck,
    get_vend,
    record_token_accepted,
    reprint,
    reverse_vend,
)
from vending.security_module import SecurityModule
from vending.shifts import (
    POINT_CODE_PATTERN,
    CashUp,
    OpenShift,
    bank_cash,
    cash_up,
    close_shift,
    create_vending_point,
    currency_of,
    current_shift,
    current_shift_point,
    open_shift,
)
from vending.tariff_documents import TariffDocument

COUNTER_CHANNEL = "counter"

# Role names as gridvend.auth knows them.
ADMIN = ("admin",)
SUPERVISORS = ("admin", "supervisor")
COUNTER_STAFF = ("admin", "supervisor", "clerk")
CLERKS = ("clerk",)
REPRINTERS = ("supervisor", "clerk")
STAFF = ("admin", "supervisor", "clerk", "technician")
ACCEPTANCE_REPORTERS = ("admin", "supervisor", "technician")

# HTTP status of each VendingError code; any other code answers 409 (a state conflict).
_NOT_FOUND = {
    "customer_not_found",
    "account_not_found",
    "meter_not_found",
    "tariff_not_found",
    "vend_not_found",
    "vending_point_not_found",
    "shift_not_found",
    "key_change_not_found",
}
_UNPROCESSABLE = {
    "invalid_request",
    "invalid_json",
    "invalid_amount",
    "invalid_meter_number",
    "invalid_tariff",
    "invalid_currency",
    "invalid_period",
    "invalid_timezone",
    "invalid_grading",
    "invalid_supply_voltage",
    "amount_below_minimum",
    "amount_above_maximum",
    "pricing_refused",
    "reason_required",
    "meter_or_account_required",
    "invalid_key_change",
    "no_key_change",
    "key_revision_required",
    "target_key_not_found",
    "target_key_retired",
    "base_date_mismatch",
    "key_change_refused",
}
_FORBIDDEN = {"not_your_shift"}
_UNAVAILABLE = {"database_busy"}

T = TypeVar("T", bound=BaseModel)


def http_status(code: str) -> int:
    """The HTTP status answering a VendingError ``code``."""
    if code in _NOT_FOUND:
        return status.HTTP_404_NOT_FOUND
    if code in _UNPROCESSABLE:
        return status.HTTP_422_UNPROCESSABLE_CONTENT
    if code in _FORBIDDEN:
        return status.HTTP_403_FORBIDDEN
    if code in _UNAVAILABLE:
        return status.HTTP_503_SERVICE_UNAVAILABLE
    return status.HTTP_409_CONFLICT


def http_refusal(exc: VendingError) -> HTTPException:
    detail: dict[str, Any] = {"code": exc.code, "message": str(exc)}
    if exc.detail:
        # Lists (a key change's tokens) stay lists; everything else is shown as text.
        detail["detail"] = {
            k: [str(i) for i in v] if isinstance(v, list) else str(v) for k, v in exc.detail.items()
        }
    return HTTPException(http_status(exc.code), detail=detail)


Refusal = Callable[[VendingError], HTTPException]


@contextmanager
def read_session(
    session_factory: sessionmaker[Session], refuse: Refusal = http_refusal
) -> Iterator[Session]:
    """A session for reading; a VendingError becomes the HTTP refusal ``refuse`` makes."""
    try:
        with session_factory() as session:
            yield session
    except VendingError as exc:
        raise refuse(exc) from None


@contextmanager
def write_session(
    session_factory: sessionmaker[Session], refuse: Refusal = http_refusal
) -> Iterator[Session]:
    """One transaction, committed on success and rolled back on any error. A VendingError
    is refused as ``refuse`` says; a lost race answers ``conflict`` and a locked SQLite
    database ``database_busy``, both to be retried."""
    try:
        with session_factory() as session, session.begin():
            yield session
    except VendingError as exc:
        raise refuse(exc) from None
    except IntegrityError:
        raise refuse(
            VendingError("conflict", "a concurrent change conflicted; retry the request")
        ) from None
    except OperationalError as exc:
        if "locked" in str(exc):
            raise refuse(
                VendingError("database_busy", "the database is busy; retry the request")
            ) from None
        raise


PREFIX = "/api/vending"


def install_error_handler(app: FastAPI) -> None:
    """Answer FastAPI's own validation errors (bad query or path parameters) under
    /api/vending in the counter's shape, ``{"detail": {"code", "message"}}`` with code
    ``invalid_request``; other paths keep FastAPI's default answer."""

    async def handler(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        if not request.url.path.startswith(PREFIX + "/"):
            return await request_validation_exception_handler(request, exc)
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse(
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
            content={"detail": {"code": "invalid_request", "message": f"{where}: {first['msg']}"}},
        )

    app.add_exception_handler(RequestValidationError, handler)


# Request bodies --------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LinkMeterBody(_Body):
    meter_number: Annotated[str, Field(min_length=1, max_length=32)]


class VendingPointBody(_Body):
    code: Annotated[str, Field(pattern=POINT_CODE_PATTERN)]
    name: Annotated[str, Field(min_length=1, max_length=128)]
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    credit_limit: Decimal


class BankBody(_Body):
    reference: Annotated[str, Field(min_length=1, max_length=64)]


class OpenShiftBody(_Body):
    vending_point: Annotated[str, Field(min_length=1, max_length=16)]
    opening_float: Decimal = Decimal(0)


class CloseShiftBody(_Body):
    declared_cash: Decimal


class VendBody(_Body):
    meter_number: Annotated[str | None, Field(min_length=1, max_length=32)] = None
    account_number: Annotated[str | None, Field(min_length=1, max_length=20)] = None
    amount: Decimal
    payment_method: PaymentMethod = PaymentMethod.CASH
    reference: Annotated[
        str,
        Field(
            pattern=r"^[A-Za-z0-9._:-]{1,40}$",
            description="Chosen by the client, unique per clerk: a retry with the same "
            "reference answers the vend already made instead of making a second.",
        ),
    ]
    key_change_acknowledged: bool = Field(
        default=False,
        description="The meter has a pending key change and the customer gets its tokens "
        "with this vend (printed before the credit token); without it such a vend is "
        "refused with key_change_required.",
    )


class SupplyVoltageBody(_Body):
    supply_voltage_v: Annotated[int, Field(strict=True, ge=1, le=1_000_000)]


class ReversalBody(_Body):
    reason: Annotated[str, Field(min_length=3, max_length=500)]


class TokenAcceptedBody(_Body):
    meter_number: Annotated[str, Field(min_length=1, max_length=32)]
    tid: Annotated[int, Field(ge=0, le=0xFFFFFF)]


# Field -> error code when that field is what failed validation.
_FIELD_CODES = {
    "amount": "invalid_amount",
    "opening_float": "invalid_amount",
    "declared_cash": "invalid_amount",
    "credit_limit": "invalid_amount",
    "debt": "invalid_amount",
    "meter_number": "invalid_meter_number",
    "reason": "reason_required",
    "supply_voltage_v": "invalid_supply_voltage",
}


def _validation_error(model: type[BaseModel], exc: ValidationError) -> VendingError:
    first = exc.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else ""
    where = ".".join(str(p) for p in first["loc"]) or model.__name__
    default = "invalid_tariff" if issubclass(model, TariffDocument) else "invalid_request"
    return VendingError(_FIELD_CODES.get(field, default), f"{where}: {first['msg']}")


def _parse(model: type[T], data: Any) -> T:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise http_refusal(_validation_error(model, exc)) from None


def body(model: type[T]) -> Any:
    """A dependency giving the request's JSON body as ``model``, or a coded 422."""

    async def dependency(request: Request) -> T:
        return _parse_json(model, await request.body())

    return Depends(dependency)


async def _raw_body(request: Request) -> bytes:
    return await request.body()


def _parse_json(model: type[T], raw: bytes) -> T:
    try:
        data = json.loads(raw, parse_float=Decimal)
    except ValueError:
        raise http_refusal(VendingError("invalid_json", "the body is not JSON")) from None
    return _parse(model, data)


# Answers ---------------------------------------------------------------------------------


def _customer_json(customer: Customer) -> dict[str, Any]:
    return {
        "id": customer.id,
        "name": customer.name,
        "address": customer.address,
        "phone": customer.phone,
        "email": customer.email,
        "category": customer.category,
        "protection": customer.protection,
        "supply_voltage_v": customer.supply_voltage_v,
        "created_at": customer.created_at.isoformat(),
    }


def _minor(minor: int, currency: str) -> str:
    return str(Decimal(minor).scaleb(-currency_of(currency).minor_digits))


def _account_json(account: Account) -> dict[str, Any]:
    return {
        "account_number": account.account_number,
        "customer_id": account.customer_id,
        "currency": account.currency,
        "tariff_code": account.tariff_code,
        "status": account.status,
        "arrears": _minor(account.debt_minor, account.currency),
        "debt_recovery": account.debt_recovery,
        "change_carried": _minor(account.carry_over_minor, account.currency),
        "month_to_date_kwh": str(account.month_to_date_kwh),
        "last_purchase_at": (
            account.last_purchase_at.isoformat() if account.last_purchase_at else None
        ),
        "capacity_kva": None if account.capacity_kva is None else str(account.capacity_kva),
        "free_units_eligible": account.free_units_eligible,
        "created_at": account.created_at.isoformat(),
    }


def _notification_json(n: Notification) -> dict[str, Any]:
    def when(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "id": n.id,
        "kind": n.kind,
        "channel": n.channel,
        "message": n.message,
        "created_at": n.created_at.isoformat(),
        "status": n.status,
        "attempts": n.attempts,
        "last_error": n.last_error,
        "next_attempt_at": when(n.next_attempt_at),
        "delivered_at": when(n.delivered_at),
    }


def _receipt_json(r: Receipt) -> dict[str, Any]:
    return {
        "utility": r.utility,
        "vending_point": r.vending_point,
        "clerk": r.clerk,
        "receipt_number": r.receipt_number,
        "local_time": r.local_time.isoformat(),
        "meter_number": r.meter_number,
        "customer": r.customer,
        "account_number": r.account_number,
        "copy": r.is_copy,
        "copy_number": r.copy_number,
        "reversed": r.reversed,
        "token": r.token_grouped,
        "key_change_tokens": list(r.key_change_tokens),
        "text": render_text(r),
    }


def _vend_json(record: Vend, receipt: Receipt) -> dict[str, Any]:
    voided = record.status == "reversed"
    return {
        "receipt_number": record.receipt_number,
        "reference": record.reference.split(":", 1)[-1],
        "status": record.status,
        "meter_number": receipt.meter_number,
        "account_number": receipt.account_number,
        "payment_method": record.payment_method,
        "currency": record.currency,
        "amount": _minor(record.tendered_minor, record.currency),
        "units_kwh": str(record.units_kwh.quantize(Decimal("0.1"))),
        "token": None if voided else record.token_digits,
        "token_grouped": receipt.token_grouped,
        "key_change_tokens": list(record.breakdown.get("key_change_tokens", [])),
        "tid": record.tid,
        "breakdown": record.breakdown,
        "created_at": record.created_at.isoformat(),
        "reprints": record.reprints,
        "reversed_at": record.reversed_at.isoformat() if record.reversed_at else None,
        "reversed_by": record.reversed_by,
        "reversal_reason": record.reversal_reason,
        "receipt": _receipt_json(receipt),
    }


def _cash_up_json(report: CashUp) -> dict[str, Any]:
    def m(value: Any) -> str | None:
        return None if value is None else str(value.to_decimal())

    return {
        "shift_id": report.shift_id,
        "clerk": report.clerk,
        "vending_point": report.point_code,
        "opened_at": report.opened_at.isoformat(),
        "closed_at": report.closed_at.isoformat() if report.closed_at else None,
        "currency": report.opening_float.currency.code,
        "opening_float": m(report.opening_float),
        "vends": report.vend_count,
        "net_takings": m(report.net_takings),
        "by_payment_method": [
            {
                "method": t.method,
                "count": t.count,
                "amount": m(t.amount),
                "reversed_count": t.reversed_count,
                "reversed_amount": m(t.reversed_amount),
                "net": m(t.net),
            }
            for t in report.by_method
        ],
        "expected_cash": m(report.expected_cash),
        "declared_cash": m(report.declared_cash),
        "variance": m(report.variance),
    }


def _quote_json(quote: Quote) -> dict[str, Any]:
    return {
        "meter_number": quote.meter.meter_number,
        "prepaid_mode": quote.meter.prepaid_mode,
        "account_number": quote.account.account_number,
        "customer": {
            "id": quote.customer.id,
            "name": quote.customer.name,
            "category": quote.customer.category,
            "protection": quote.customer.protection,
        },
        "tariff": {"code": quote.tariff.code, "name": quote.tariff.name},
        "currency": quote.tariff.currency.code,
        "arrears": str(quote.debt.to_decimal()),
        "debt_recovery": quote.account.debt_recovery,
        "minimum_amount": str(quote.minimum.to_decimal()),
        "maximum_amount": str(quote.maximum.to_decimal()),
    }


# The counter's vend, usable without HTTP (tests, benchmarks) -----------------------------


@dataclass(frozen=True, slots=True)
class CounterConfig:
    """What the counter prints and reports with: the utility's name and time zone."""

    utility_name: str = "gridvend utility"
    timezone: str = "UTC"


@dataclass(frozen=True, slots=True)
class CounterSale:
    """A counter vend's answer: the vend, whether this request made it (False: an earlier
    request with the same reference did), and its receipt."""

    vend: Vend
    made_now: bool
    receipt: Receipt


def counter_vend(
    session_factory: sessionmaker[Session],
    *,
    clerk: str,
    clerk_key: str,
    meter_number: str,
    amount: Decimal,
    payment_method: PaymentMethod,
    reference: str,
    security_module: SecurityModule,
    audit: AuditSink,
    clock: Callable[[], datetime],
    limits: VendLimits,
    utility_name: str = "gridvend utility",
    key_change_acknowledged: bool = False,
) -> CounterSale:
    """Sell credit at the counter: the clerk's open shift, the vend, and the snapshot a
    reversal needs, in one transaction. ``clerk_key`` scopes ``reference`` to the clerk
    (two clerks may both use reference "1"); ``clock`` gives the time of sale, read
    inside the transaction. VendingError as ``vending.counter.vend``
    plus ``no_open_shift``; nothing is stored when it is raised. The flag is False
    when the answer is a vend an earlier request with this reference made.
    ``key_change_acknowledged``: hand out the meter's pending key change with this vend.
    """
    scoped = f"{clerk_key}:{reference}"
    with session_factory() as session, session.begin():
        shift = current_shift_point(session, clerk)
        if shift is None:
            raise VendingError("no_open_shift", f"{clerk} has no open shift: open one first")
        try:
            # Locked once here (with what the receipt prints) and handed to the vend,
            # which would otherwise look the meter and account up again; the vend looks
            # for an earlier one with this reference under the lock.
            locked: LockedAccount | None = lock_for_vend(session, meter_number)
        except VendingError:
            # A retry whose meter can no longer be sold credit still gets its vend.
            if session.scalar(_COUNTER_VEND_ID, {"counter_reference": scoped}) is None:
                raise
            locked = None
        # The time of sale is read once the account is locked: a request that waited for
        # the lock must not carry a time before the purchase it waited for.
        now = clock()
        record = vend(
            session,
            VendRequest(
                meter_number=meter_number,
                amount=amount,
                payment_method=payment_method,
                channel=COUNTER_CHANNEL,
                reference=scoped,
                operator=clerk,
                shift_id=shift.id,
                key_change_acknowledged=key_change_acknowledged,
            ),
            security_module=security_module,
            audit=audit,
            now=now,
            limits=limits,
            locked=locked,
            shift=shift,
            reversible_here=True,
        )
        made_now = made_in(session, record)
        parts = None
        if made_now:
            assert locked is not None  # a vend is made only with the account locked
            parts = _receipt_parts(locked, shift)
        receipt = build_receipt(
            session,
            record,
            utility=utility_name,
            meter=locked.meter if locked else None,
            parts=parts,
        )
        return CounterSale(record, made_now, receipt)


def _receipt_parts(locked: LockedAccount, shift: OpenShift) -> ReceiptParts | None:
    # A vend made now is for the locked account at the shift's point: what the lock and
    # the shift queries read is what the receipt prints (None: not read with the lock).
    if locked.customer_name is None:
        return None
    return ReceiptParts(
        account_number=locked.account.account_number,
        customer_name=locked.customer_name,
        point_name=shift.point_name,
        point_code=shift.point_code,
        timezone=locked.timezone,
    )


_COUNTER_VEND_ID = select(Vend.id).where(
    Vend.channel == COUNTER_CHANNEL, Vend.reference == bindparam("counter_reference")
)


# The router ------------------------------------------------------------------------------


def make_router(
    session_factory: sessionmaker[Session],
    *,
    require: Callable[..., Any],
    security_module: SecurityModule,
    audit: AuditSink,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    limits: VendLimits = VendLimits(),
    config: CounterConfig = CounterConfig(),
    grading_policy: GradingPolicy | None = None,
    token_acceptance: AcceptanceCheck | None = None,
    require_later: Callable[..., Any],
    vend_threads: int | None = None,
) -> APIRouter:
    """The counter routes; ``require(*roles)`` is the caller-check dependency giving a
    principal with ``username``, ``user_id`` and ``role``; ``require_later(*roles)``
    (``gridvend.auth.Auth.require_later``) checks the vend's caller in the vend's own
    worker thread instead. ``token_acceptance(session,
    meter_id, tid)`` tells reversals whether the head-end saw the meter accept a token.
    Vends run on at most ``vend_threads`` worker threads at once (default: one on SQLite,
    eight on a server database; see ``vending.lanes``)."""
    router = APIRouter(prefix=PREFIX, tags=["vending"])
    vend_lane = ThreadLane(vend_threads or lane_size_for(session_factory))

    def reading() -> AbstractContextManager[Session]:
        return read_session(session_factory)

    def writing() -> AbstractContextManager[Session]:
        return write_session(session_factory)

    def record(session: Session, actor: str, action: str, subject: str, **detail: Any) -> None:
        audit.record(session, actor=actor, action=action, subject=subject, detail=detail)

    def account_by_number(session: Session, number: str, *, lock: bool = False) -> Account:
        query = select(Account).where(Account.account_number == number)
        if lock:
            query = query.with_for_update()
        account = session.scalar(query)
        if account is None:
            raise VendingError("account_not_found", f"no account {number!r}")
        return account

    def linked_meter_numbers(session: Session, account_id: int) -> list[str]:
        numbers = []
        for link in session.scalars(
            select(AccountMeter).where(
                AccountMeter.account_id == account_id, AccountMeter.unlinked_at.is_(None)
            )
        ):
            meter = find_meter(session, meter_id=link.meter_id)
            if meter is not None and meter.meter_number:
                numbers.append(meter.meter_number)
        return numbers

    # Customers --------------------------------------------------------------------------

    @router.post("/customers", status_code=status.HTTP_201_CREATED)
    def create_customer(
        principal: Any = require(*COUNTER_STAFF),
        new: NewCustomer = body(NewCustomer),
    ) -> dict[str, Any]:
        with writing() as session:
            customer = add_customer(session, new, clock())
            record(session, principal.username, "customer.create", f"customer:{customer.id}")
            return _customer_json(customer)

    @router.get("/customers")
    def search_customers(
        _: Any = require(*COUNTER_STAFF),
        name: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
        phone: Annotated[str | None, Query(min_length=3, max_length=32)] = None,
        meter: Annotated[str | None, Query(min_length=1, max_length=32)] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
    ) -> list[dict[str, Any]]:
        """Customers whose name contains ``name`` (any case), whose phone contains
        ``phone``, or who hold the account ``meter`` is on."""
        with reading() as session:
            query = select(Customer)
            if name:
                query = query.where(func.lower(Customer.name).contains(name.lower()))
            if phone:
                query = query.where(Customer.phone.contains(phone))
            if meter:
                try:
                    found = find_meter(session, meter_number=meter)
                except ValueError as exc:
                    raise VendingError("invalid_meter_number", str(exc)) from None
                link = open_link(session, found.id) if found else None
                if link is None:
                    return []
                owner = select(Account.customer_id).where(Account.id == link.account_id)
                query = query.where(Customer.id.in_(owner))
            rows = session.scalars(query.order_by(Customer.name, Customer.id).limit(limit))
            return [_customer_json(c) for c in rows]

    @router.get("/customers/{customer_id}")
    def show_customer(customer_id: int, _: Any = require(*COUNTER_STAFF)) -> dict[str, Any]:
        with reading() as session:
            customer = session.get(Customer, customer_id)
            if customer is None:
                raise VendingError("customer_not_found", f"no customer {customer_id}")
            accounts = session.scalars(
                select(Account).where(Account.customer_id == customer_id).order_by(Account.id)
            )
            return {
                **_customer_json(customer),
                "accounts": [
                    {**_account_json(a), "meters": linked_meter_numbers(session, a.id)}
                    for a in accounts
                ],
            }

    @router.get("/customers/{customer_id}/grade")
    def customer_grade(customer_id: int, _: Any = require(*COUNTER_STAFF)) -> dict[str, Any]:
        """The customer's grade and the facts it rests on, all from stored data (see
        vending.customer_grades): last 365 days' kWh, supply voltage, late payments and
        disconnections."""
        with reading() as session:
            customer = session.get(Customer, customer_id)
            if customer is None:
                raise VendingError("customer_not_found", f"no customer {customer_id}")
            graded = grade_of_customer(session, customer, clock(), grading_policy)
            return {"customer_id": customer_id, **graded.as_json()}

    @router.put("/customers/{customer_id}/supply-voltage")
    def set_supply_voltage(
        customer_id: int,
        principal: Any = require(*SUPERVISORS),
        change: SupplyVoltageBody = body(SupplyVoltageBody),
    ) -> dict[str, Any]:
        """Record the customer's nominal supply voltage (a grading fact; audited)."""
        with writing() as session:
            customer = session.get(Customer, customer_id)
            if customer is None:
                raise VendingError("customer_not_found", f"no customer {customer_id}")
            before = customer.supply_voltage_v
            customer.supply_voltage_v = change.supply_voltage_v
            if before != change.supply_voltage_v:
                record(
                    session,
                    principal.username,
                    "customer.supply_voltage",
                    f"customer:{customer_id}",
                    before=before,
                    after=change.supply_voltage_v,
                )
            return _customer_json(customer)

    # Accounts ---------------------------------------------------------------------------

    @router.post("/accounts", status_code=status.HTTP_201_CREATED)
    def create_account(
        principal: Any = require(*COUNTER_STAFF),
        new: NewAccount = body(NewAccount),
    ) -> dict[str, Any]:
        with writing() as session:
            account = open_account(session, new, clock())
            record(
                session,
                principal.username,
                "account.open",
                f"account:{account.account_number}",
                customer_id=account.customer_id,
                tariff=account.tariff_code,
                arrears=str(new.debt),
            )
            return _account_json(account)

    @router.get("/accounts/{account_number}")
    def show_account(account_number: str, _: Any = require(*COUNTER_STAFF)) -> dict[str, Any]:
        with reading() as session:
            account = account_by_number(session, account_number)
            balance = session.scalar(
                select(func.coalesce(func.sum(LedgerEntry.amount_minor), 0)).where(
                    LedgerEntry.account_id == account.id
                )
            )
            history = []
            for link in session.scalars(
                select(AccountMeter)
                .where(AccountMeter.account_id == account.id)
                .order_by(AccountMeter.linked_at, AccountMeter.id)
            ):
                meter = find_meter(session, meter_id=link.meter_id)
                history.append(
                    {
                        "meter_number": meter.meter_number if meter else None,
                        "linked_at": link.linked_at.isoformat(),
                        "linked_by": link.linked_by,
                        "unlinked_at": link.unlinked_at.isoformat() if link.unlinked_at else None,
                    }
                )
            vends = session.scalars(
                select(Vend).where(Vend.account_id == account.id).order_by(Vend.id.desc()).limit(20)
            )
            customer = session.get_one(Customer, account.customer_id)
            graded = grade_of_customer(session, customer, clock(), grading_policy)
            return {
                **_account_json(account),
                "customer_grade": graded.as_json(),
                "balance": _minor(balance or 0, account.currency),
                "meters": linked_meter_numbers(session, account.id),
                "meter_history": history,
                "recent_vends": [
                    {
                        "receipt_number": v.receipt_number,
                        "created_at": v.created_at.isoformat(),
                        "amount": _minor(v.tendered_minor, v.currency),
                        "units_kwh": str(v.units_kwh.quantize(Decimal("0.1"))),
                        "status": v.status,
                    }
                    for v in vends
                ],
            }

    @router.get("/accounts/{account_number}/notifications")
    def list_notifications(
        account_number: str,
        _: Any = require(*SUPERVISORS),
        state: Annotated[
            Literal["pending", "delivered", "failed"] | None, Query(alias="status")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> list[dict[str, Any]]:
        """The account's customer notifications, newest first, with their delivery state
        (``status``, ``attempts``, ``last_error``, ``next_attempt_at``)."""
        with reading() as session:
            account = account_by_number(session, account_number)
            query = select(Notification).where(Notification.account_id == account.id)
            if state is not None:
                query = query.where(Notification.status == state)
            rows = session.scalars(query.order_by(Notification.id.desc()).limit(limit))
            return [_notification_json(n) for n in rows]

    @router.post("/accounts/{account_number}/meters", status_code=status.HTTP_201_CREATED)
    def link_account_meter(
        account_number: str,
        principal: Any = require(*COUNTER_STAFF),
        link: LinkMeterBody = body(LinkMeterBody),
    ) -> dict[str, Any]:
        """Put a meter on the account (moving it off any other account, history kept)."""
        with writing() as session:
            account = account_by_number(session, account_number)
            row = link_meter(
                session, account.id, link.meter_number, actor=principal.username, now=clock()
            )
            record(
                session,
                principal.username,
                "account.link_meter",
                f"account:{account_number}",
                meter=link.meter_number,
            )
            return {
                "account_number": account_number,
                "meter_id": row.meter_id,
                "linked_at": row.linked_at.isoformat(),
            }

    # Tariffs ----------------------------------------------------------------------------

    @router.post("/tariffs", status_code=status.HTTP_201_CREATED)
    def store_tariff(
        principal: Any = require(*SUPERVISORS),
        document: TariffDocument = body(TariffDocument),
    ) -> dict[str, Any]:
        """Create a tariff, or add versions (later effective dates) to a stored one."""
        with writing() as session:
            tariff = save_tariff(session, document, actor=principal.username, now=clock())
            record(
                session,
                principal.username,
                "tariff.save",
                f"tariff:{tariff.code}",
                versions=[v.effective_from.isoformat() for v in document.versions],
            )
            return TariffDocument.from_tariff(tariff).model_dump(mode="json")

    @router.get("/tariffs")
    def list_tariffs(_: Any = require(*STAFF)) -> list[dict[str, Any]]:
        with reading() as session:
            versions: dict[str, list[str]] = {}
            for code, effective in session.execute(
                select(
                    TariffVersionRecord.tariff_code, TariffVersionRecord.effective_from
                ).order_by(TariffVersionRecord.effective_from)
            ):
                versions.setdefault(code, []).append(effective.isoformat())
            return [
                {
                    "code": t.code,
                    "name": t.name,
                    "currency": t.currency,
                    "timezone": t.timezone,
                    "versions": versions.get(t.code, []),
                }
                for t in session.scalars(select(TariffRecord).order_by(TariffRecord.code))
            ]

    @router.get("/tariffs/{code}")
    def show_tariff(code: str, _: Any = require(*STAFF)) -> dict[str, Any]:
        with reading() as session:
            return TariffDocument.from_tariff(load_tariff(session, code)).model_dump(mode="json")

    # Vending points ---------------------------------------------------------------------

    def point_json(point: VendingPoint) -> dict[str, Any]:
        return {
            "code": point.code,
            "name": point.name,
            "currency": point.currency,
            "credit_limit": _minor(point.credit_limit_minor, point.currency),
            "outstanding": _minor(point.outstanding_minor, point.currency),
            "available": _minor(
                max(0, point.credit_limit_minor - point.outstanding_minor), point.currency
            ),
            "active": point.active,
        }

    @router.post("/vending-points", status_code=status.HTTP_201_CREATED)
    def add_vending_point(
        principal: Any = require(*ADMIN),
        new: VendingPointBody = body(VendingPointBody),
    ) -> dict[str, Any]:
        with writing() as session:
            point = create_vending_point(
                session,
                code=new.code,
                name=new.name,
                currency=new.currency,
                credit_limit=new.credit_limit,
            )
            record(
                session,
                principal.username,
                "vending_point.create",
                f"vending_point:{point.code}",
                credit_limit=str(new.credit_limit),
            )
            return point_json(point)

    @router.get("/vending-points")
    def list_vending_points(_: Any = require(*COUNTER_STAFF)) -> list[dict[str, Any]]:
        with reading() as session:
            return [
                point_json(p)
                for p in session.scalars(select(VendingPoint).order_by(VendingPoint.code))
            ]

    @router.post("/vending-points/{code}/banking", status_code=status.HTTP_201_CREATED)
    def bank_vending_point_cash(
        code: str,
        principal: Any = require(*ADMIN),
        bank: BankBody = body(BankBody),
    ) -> dict[str, Any]:
        """Record the point's outstanding cash as banked; its limit is free again."""
        with writing() as session:
            banking = bank_cash(
                session, code, reference=bank.reference, actor=principal.username, now=clock()
            )
            point = session.get_one(VendingPoint, banking.vending_point_id)
            amount = _minor(banking.amount_minor, point.currency)
            record(
                session,
                principal.username,
                "vending_point.bank",
                f"vending_point:{code}",
                amount=amount,
                reference=bank.reference,
            )
            return {
                "vending_point": code,
                "amount": amount,
                "reference": banking.reference,
                "banked_at": banking.banked_at.isoformat(),
                "banked_by": banking.banked_by,
            }

    # Shifts -----------------------------------------------------------------------------

    @router.post("/shifts", status_code=status.HTTP_201_CREATED)
    def start_shift(
        principal: Any = require(*CLERKS),
        new: OpenShiftBody = body(OpenShiftBody),
    ) -> dict[str, Any]:
        with writing() as session:
            shift = open_shift(
                session,
                clerk=principal.username,
                point_code=new.vending_point,
                opening_float=new.opening_float,
                now=clock(),
            )
            record(
                session,
                principal.username,
                "shift.open",
                f"shift:{shift.id}",
                vending_point=new.vending_point,
                opening_float=str(new.opening_float),
            )
            return _cash_up_json(cash_up(session, shift))

    @router.get("/shifts/current")
    def show_current_shift(principal: Any = require(*CLERKS)) -> dict[str, Any]:
        """The clerk's open shift with its running totals (an interim cash-up)."""
        with reading() as session:
            shift = current_shift(session, principal.username)
            if shift is None:
                raise VendingError("no_open_shift", f"{principal.username} has no open shift")
            return _cash_up_json(cash_up(session, shift))

    @router.post("/shifts/current/close")
    def end_shift(
        principal: Any = require(*CLERKS),
        close: CloseShiftBody = body(CloseShiftBody),
    ) -> dict[str, Any]:
        """Close the clerk's shift with the cash counted: the cash-up report."""
        with writing() as session:
            report = close_shift(
                session, clerk=principal.username, declared_cash=close.declared_cash, now=clock()
            )
            out = _cash_up_json(report)
            record(
                session,
                principal.username,
                "shift.close",
                f"shift:{report.shift_id}",
                expected_cash=out["expected_cash"],
                declared_cash=out["declared_cash"],
                variance=out["variance"],
            )
            return out

    @router.get("/shifts/{shift_id}/cash-up")
    def shift_cash_up(shift_id: int, principal: Any = require(*COUNTER_STAFF)) -> dict[str, Any]:
        with reading() as session:
            shift = session.get(Shift, shift_id)
            if shift is None:
                raise VendingError("shift_not_found", f"no shift {shift_id}")
            if principal.role == "clerk" and shift.clerk != principal.username:
                raise VendingError("not_your_shift", "a clerk sees only their own shifts")
            return _cash_up_json(cash_up(session, shift))

    # Lookup and vend --------------------------------------------------------------------

    def meters_to_quote(
        session: Session, meter: str | None, account_number: str | None
    ) -> list[str]:
        if meter:
            return [meter]
        if account_number:
            account = account_by_number(session, account_number)
            numbers = linked_meter_numbers(session, account.id)
            if not numbers:
                raise VendingError("meter_not_on_account", f"account {account_number} has no meter")
            return numbers
        raise VendingError("meter_or_account_required", "give a meter number or an account number")

    @router.get("/lookup")
    def pre_vend_lookup(
        _: Any = require(*COUNTER_STAFF),
        meter: Annotated[str | None, Query(min_length=1, max_length=32)] = None,
        account: Annotated[str | None, Query(min_length=1, max_length=20)] = None,
    ) -> dict[str, Any]:
        """Who and what a vend would be for: one quote per meter (an account may have
        several), each with the customer, tariff, arrears, minimum/maximum amount and the
        meter's pending key change (without its tokens)."""
        with reading() as session:
            now = clock()
            quotes = [
                lookup(session, number, now, limits)
                for number in meters_to_quote(session, meter, account)
            ]
            return {
                "quotes": [
                    {
                        **_quote_json(quote),
                        "key_change": pending_key_change_json(session, quote.meter.id),
                    }
                    for quote in quotes
                ]
            }

    vend_caller = require_later(*CLERKS)

    @router.post("/vends", status_code=status.HTTP_201_CREATED)
    async def sell(caller: Any = vend_caller, raw: bytes = Depends(_raw_body)) -> JSONResponse:
        """Vend at the counter (see ``counter_vend``). A retry with the same reference
        answers 200 with the vend already made."""
        return await vend_lane.run(sell_now, caller, raw)

    def sell_now(caller: Any, raw: bytes) -> JSONResponse:
        # The caller first: a request with a bad token learns nothing about its body.
        principal = caller.principal()
        request = _parse_json(VendBody, raw)
        try:
            with session_factory() as session:
                numbers = meters_to_quote(session, request.meter_number, request.account_number)
            if len(numbers) > 1:
                raise VendingError(
                    "meter_required",
                    f"account {request.account_number} has {len(numbers)} meters: give the meter",
                )
            sale = counter_vend(
                session_factory,
                clerk=principal.username,
                clerk_key=str(principal.user_id),
                meter_number=numbers[0],
                amount=request.amount,
                payment_method=request.payment_method,
                reference=request.reference,
                security_module=security_module,
                audit=audit,
                clock=clock,
                limits=limits,
                utility_name=config.utility_name,
                key_change_acknowledged=request.key_change_acknowledged,
            )
        except VendingError as exc:
            raise http_refusal(exc) from None
        except OperationalError as exc:
            if "locked" in str(exc):
                raise http_refusal(
                    VendingError("database_busy", "the database is busy; retry the request")
                ) from None
            raise
        # Every value is already JSON's own type: answering directly skips FastAPI's
        # generic encoder, a measurable share of a vend's CPU.
        return JSONResponse(
            _vend_json(sale.vend, sale.receipt),
            status_code=status.HTTP_201_CREATED if sale.made_now else status.HTTP_200_OK,
        )

    @router.get("/vends/{receipt_number}")
    def show_vend(receipt_number: str, _: Any = require(*COUNTER_STAFF)) -> dict[str, Any]:
        with reading() as session:
            made = get_vend(session, receipt_number)
            receipt = build_receipt(session, made, utility=config.utility_name)
            return _vend_json(made, receipt)

    @router.post("/vends/{receipt_number}/reprint")
    def reprint_receipt(
        receipt_number: str,
        principal: Any = require(*REPRINTERS),
        format: Literal["json", "text", "html"] = "json",
    ) -> Any:
        """The same receipt and token again, marked COPY n; counted and audited.
        A reversed vend is refused (vend_reversed): its token is void."""
        with writing() as session:
            made = reprint(session, receipt_number)
            record(
                session,
                principal.username,
                "vend.reprint",
                f"receipt:{receipt_number}",
                copy=made.reprints,
            )
            receipt = build_receipt(
                session, made, utility=config.utility_name, copy_number=made.reprints
            )
        if format == "text":
            return PlainTextResponse(render_text(receipt))
        if format == "html":
            return HTMLResponse(render_html(receipt))
        return _vend_json(made, receipt)

    @router.get("/vends/{receipt_number}/receipt.html", response_class=HTMLResponse)
    def original_receipt_html(receipt_number: str, _: Any = require(*REPRINTERS)) -> str:
        """The printable page of a vend's receipt as issued (a copy needs a reprint)."""
        with reading() as session:
            made = get_vend(session, receipt_number)
            if made.reprints > 0:
                raise VendingError(
                    "receipt_already_printed", "the receipt was reprinted: print a copy instead"
                )
            return render_html(build_receipt(session, made, utility=config.utility_name))

    @router.post("/vends/{receipt_number}/reversal")
    def reverse(
        receipt_number: str,
        principal: Any = require(*SUPERVISORS),
        reversal: ReversalBody = body(ReversalBody),
    ) -> dict[str, Any]:
        """Reverse a vend with a reason (rules in vending.reversals)."""
        with writing() as session:
            made = reverse_vend(
                session,
                receipt_number,
                reason=reversal.reason,
                actor=principal.username,
                now=clock(),
                accepted_elsewhere=token_acceptance,
            )
            record(
                session,
                principal.username,
                "vend.reverse",
                f"receipt:{receipt_number}",
                reason=reversal.reason,
                amount=_minor(made.tendered_minor, made.currency),
                tid=made.tid,
            )
            return _vend_json(made, build_receipt(session, made, utility=config.utility_name))

    @router.post("/token-acceptances", status_code=status.HTTP_201_CREATED)
    def token_accepted(
        principal: Any = require(*ACCEPTANCE_REPORTERS),
        report: TokenAcceptedBody = body(TokenAcceptedBody),
    ) -> dict[str, Any]:
        """Record that a meter accepted the token with ``tid`` (a technician's report; the
        head-end records its meters' token_accepted events the same way)."""
        with writing() as session:
            try:
                meter = find_meter(session, meter_number=report.meter_number)
            except ValueError as exc:
                raise VendingError("invalid_meter_number", str(exc)) from None
            if meter is None:
                raise VendingError("meter_not_found", f"meter {report.meter_number} is unknown")
            new = record_token_accepted(
                session, meter_id=meter.id, tid=report.tid, at=clock(), source="technician"
            )
            if new:
                record(
                    session,
                    principal.username,
                    "token.accepted",
                    f"meter:{meter.meter_number}",
                    tid=report.tid,
                )
            return {"meter_number": meter.meter_number, "tid": report.tid, "new": new}

    # Reports ----------------------------------------------------------------------------

    @router.get("/reports/daily-sales")
    def sales_report(
        _: Any = require(*SUPERVISORS),
        date_from: date | None = None,
        date_to: date | None = None,
        format: Literal["json", "csv"] = "json",
    ) -> Any:
        """Sales per local day by vending point and by tariff (default: today)."""
        with reading() as session:
            today = clock().astimezone(zone_or_error(config.timezone)).date()
            report = daily_sales(
                session, date_from or today, date_to or date_from or today, config.timezone
            )
        if format == "csv":
            return PlainTextResponse(
                report.as_csv(),
                media_type="text/csv",
                headers={
                    "Content-Disposition": f'attachment; filename="sales-{report.date_from}'
                    f'-{report.date_to}.csv"'
                },
            )
        return report.as_json()

    return router
