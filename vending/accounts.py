"""Customers, accounts, the meter-account link (with history) and stored tariffs."""

from __future__ import annotations

import threading
import uuid
import weakref
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, cast

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import (
    ColumnElement,
    Engine,
    ScalarSelect,
    Select,
    Table,
    bindparam,
    func,
    select,
    update,
)
from sqlalchemy.orm import InstrumentedAttribute, Session
from sqlalchemy.orm.attributes import set_committed_value

from headend.interface import find_meter
from vending import localtime
from vending.debt import DebtRecoveryDocument, DebtRecoveryRule, DebtRuleError
from vending.driver_statements import DriverStatement
from vending.errors import VendingError
from vending.models import (
    Account,
    AccountMeter,
    Customer,
    TariffRecord,
    TariffVersionRecord,
)
from vending.money import Currency, Money, MoneyError
from vending.pricing import VendAccount
from vending.tariff_documents import TariffDocument, TariffVersionDocument
from vending.tariffs import AccountTerms, Tariff, TariffError


class CustomerCategory(StrEnum):
    RESIDENTIAL = "residential"
    COMMERCIAL = "commercial"
    INDUSTRIAL = "industrial"


class Protection(StrEnum):
    LIFE_SUPPORT = "life_support"
    HOSPITAL = "hospital"
    PRIORITY = "priority"


class NewCustomer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=128)]
    address: Annotated[str, Field(max_length=500)] = ""
    phone: Annotated[str, Field(max_length=32, pattern=r"^[0-9 +()-]*$")] = ""
    email: Annotated[str, Field(max_length=128, pattern=r"^$|^[^@\s]+@[^@\s]+\.[^@\s]+$")] = ""
    category: CustomerCategory = CustomerCategory.RESIDENTIAL
    protection: Protection | None = None
    supply_voltage_v: Annotated[
        int, Field(ge=1, le=1_000_000, description="Nominal supply voltage, volts.")
    ] = 230


class NewAccount(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer_id: int
    tariff_code: Annotated[str, Field(min_length=1, max_length=40)]
    debt: Annotated[Decimal, Field(ge=0, description="Arrears taken over, major units.")] = Decimal(
        0
    )
    debt_recovery: DebtRecoveryDocument = DebtRecoveryDocument()
    capacity_kva: Annotated[Decimal | None, Field(ge=0)] = None
    free_units_eligible: bool = True


def add_customer(session: Session, new: NewCustomer, now: datetime) -> Customer:
    customer = Customer(
        name=new.name,
        address=new.address,
        phone=new.phone,
        email=new.email,
        category=new.category.value,
        protection=new.protection.value if new.protection else None,
        supply_voltage_v=new.supply_voltage_v,
        created_at=now,
    )
    session.add(customer)
    session.flush()
    return customer


def open_account(session: Session, new: NewAccount, now: datetime) -> Account:
    """Open an account on a stored tariff; VendingError customer_not_found / tariff_not_found."""
    if session.get(Customer, new.customer_id) is None:
        raise VendingError("customer_not_found", f"no customer {new.customer_id}")
    tariff = load_tariff(session, new.tariff_code)
    try:
        debt = Money.parse(new.debt, tariff.currency)
        rule = DebtRecoveryRule.from_document(new.debt_recovery.model_dump(mode="json"))
    except (MoneyError, DebtRuleError) as exc:
        raise VendingError("invalid_account", str(exc)) from None
    account = Account(
        # Unique placeholder until the id is known (the number is derived from it).
        account_number=f"new-{uuid.uuid4().hex[:15]}",
        customer_id=new.customer_id,
        currency=tariff.currency.code,
        tariff_code=tariff.code,
        capacity_kva=new.capacity_kva,
        free_units_eligible=new.free_units_eligible,
        debt_minor=debt.minor,
        carry_over_minor=0,
        month_to_date_kwh=Decimal(0),
        # Monthly fixed charges accrue from the day the account opens.
        fixed_charged_through=localtime.local_date(now, tariff.tz) - timedelta(days=1),
        debt_recovery=rule.to_document(),
        status="active",
        created_at=now,
    )
    session.add(account)
    session.flush()
    account.account_number = f"A{account.id:09d}"
    session.flush()
    return account


def link_meter(
    session: Session, account_id: int, meter_number: str, *, actor: str, now: datetime
) -> AccountMeter:
    """Put a registered meter on an account, closing its link to any previous account.

    VendingError: account_not_found, meter_not_found, meter_already_linked (same account).
    """
    if session.get(Account, account_id) is None:
        raise VendingError("account_not_found", f"no account {account_id}")
    try:
        meter = find_meter(session, meter_number=meter_number)
    except ValueError as exc:
        raise VendingError("invalid_meter_number", str(exc)) from None
    if meter is None:
        raise VendingError("meter_not_found", f"meter {meter_number} is not registered")
    current = open_link(session, meter.id)
    if current is not None:
        if current.account_id == account_id:
            raise VendingError(
                "meter_already_linked", f"meter {meter_number} is already on this account"
            )
        current.unlinked_at = now
        session.flush()
    link = AccountMeter(account_id=account_id, meter_id=meter.id, linked_at=now, linked_by=actor)
    session.add(link)
    session.flush()
    return link


def open_link(session: Session, meter_id: int) -> AccountMeter | None:
    return session.scalar(
        select(AccountMeter).where(
            AccountMeter.meter_id == meter_id, AccountMeter.unlinked_at.is_(None)
        )
    )


def save_tariff(session: Session, document: TariffDocument, *, actor: str, now: datetime) -> Tariff:
    """Store a tariff or add versions to a stored one (existing versions never change).

    VendingError: invalid_tariff (the tariff's own validation), tariff_mismatch (the
    identity differs from the stored tariff's), version_exists (a stored effective date).
    """
    try:
        tariff = document.to_tariff()
    except (TariffError, ValueError) as exc:
        raise VendingError("invalid_tariff", str(exc)) from None
    record = session.get(TariffRecord, document.code)
    if record is None:
        session.add(
            TariffRecord(
                code=document.code,
                name=document.name,
                currency=document.currency,
                currency_minor_digits=document.currency_minor_digits,
                timezone=document.timezone,
                created_at=now,
            )
        )
    elif (record.currency, record.timezone) != (document.currency, document.timezone):
        raise VendingError(
            "tariff_mismatch", f"tariff {document.code} exists with another currency or zone"
        )
    stored = set(
        session.scalars(
            select(TariffVersionRecord.effective_from).where(
                TariffVersionRecord.tariff_code == document.code
            )
        )
    )
    for version in document.versions:
        if version.effective_from in stored:
            raise VendingError(
                "version_exists",
                f"tariff {document.code} already has a version from {version.effective_from}; "
                "tariff versions are never changed, add one with a later date",
            )
        session.add(
            TariffVersionRecord(
                tariff_code=document.code,
                effective_from=version.effective_from,
                document=version.model_dump(mode="json"),
                created_at=now,
                created_by=actor,
            )
        )
    session.flush()
    # Not cached from this session: if the transaction rolls back, SQLite gives the
    # versions' ids to the next versions saved, and a cached tariff would price with the
    # rolled-back rates.
    session.info.setdefault(_TARIFFS_WRITTEN, set()).add(document.code)
    return load_tariff(session, document.code) if stored else tariff


def load_tariff(session: Session, code: str, *, newest_version_id: int | None = None) -> Tariff:
    """The stored tariff with all its versions; VendingError tariff_not_found.

    Versions are only ever added (never changed or deleted, see ``save_tariff``), so the
    newest version's id names a tariff's set of versions: a tariff is parsed once per set
    and cached (every vend needs one). ``newest_version_id``: that id, when the caller
    read it with a query of its own in this transaction (saves one here).
    """
    if newest_version_id is None:
        newest_version_id = (
            session.connection().execute(_NEWEST_VERSION_ID, {"version_tariff_code": code}).scalar()
        )
    engine = session.get_bind().engine
    cacheable = code not in session.info.get(_TARIFFS_WRITTEN, ())
    with _tariff_cache_lock:
        cached = _tariff_cache.get(engine, {}).get(code) if cacheable else None
    if newest_version_id is not None and cached is not None and cached[0] == newest_version_id:
        # Versions exist only under their tariff's row (foreign key), and that row's
        # fields never change, so the cached tariff stands without reading it.
        return cached[1]
    record = session.get(TariffRecord, code)
    if record is None:
        raise VendingError("tariff_not_found", f"no tariff {code!r}")
    rows = session.execute(
        select(TariffVersionRecord.id, TariffVersionRecord.document)
        .where(TariffVersionRecord.tariff_code == code)
        .order_by(TariffVersionRecord.effective_from)
    ).all()
    documents = [row.document for row in rows]
    tariff = TariffDocument(
        code=record.code,
        name=record.name,
        currency=record.currency,
        currency_minor_digits=record.currency_minor_digits,
        timezone=record.timezone,
        versions=[TariffVersionDocument.model_validate(v) for v in documents],
    ).to_tariff()
    if rows and cacheable:
        with _tariff_cache_lock:
            _tariff_cache.setdefault(engine, {})[code] = (max(row.id for row in rows), tariff)
    return tariff


# Per database (engine), then per tariff code: (newest version id, tariff); version ids
# are a database's own. Sessions that saved a tariff's versions neither read nor fill its
# entry (see save_tariff).
_TARIFFS_WRITTEN = "gridvend.tariffs_written"
_tariff_cache: weakref.WeakKeyDictionary[Engine, dict[str, tuple[int, Tariff]]] = (
    weakref.WeakKeyDictionary()
)
_tariff_cache_lock = threading.Lock()


def _newest_version(tariff_code: ColumnElement[str] | InstrumentedAttribute[str]) -> Select[Any]:
    return select(func.max(TariffVersionRecord.id)).where(
        TariffVersionRecord.tariff_code == tariff_code
    )


_NEWEST_VERSION_ID = _newest_version(bindparam("version_tariff_code"))


def newest_version_id_of(
    tariff_code: ColumnElement[str] | InstrumentedAttribute[str],
) -> ScalarSelect[int]:
    """The newest version id of the tariff ``tariff_code`` names, as a column for a
    caller's own query (see ``load_tariff``)."""
    return _newest_version(tariff_code).scalar_subquery()


def pricing_state(account: Account, currency: Currency) -> VendAccount:
    """The account as pricing sees it."""
    return VendAccount(
        debt=Money(account.debt_minor, currency),
        carry_over=Money(account.carry_over_minor, currency),
        month_to_date_kwh=account.month_to_date_kwh,
        last_purchase_at=account.last_purchase_at,
        fixed_charged_through=account.fixed_charged_through,
        terms=AccountTerms(
            capacity_kva=account.capacity_kva, free_units_eligible=account.free_units_eligible
        ),
        debt_recovery=DebtRecoveryRule.from_document(account.debt_recovery or {}),
    )


def store_pricing_state(account: Account, state: VendAccount) -> None:
    account.debt_minor = state.debt.minor
    account.carry_over_minor = state.carry_over.minor
    account.month_to_date_kwh = state.month_to_date_kwh
    account.last_purchase_at = state.last_purchase_at
    account.fixed_charged_through = state.fixed_charged_through


def write_pricing_state(session: Session, account: Account, state: VendAccount) -> None:
    """Store ``state`` on the account's row now, in one UPDATE, and on ``account`` as its
    loaded state (not a pending change): the vend's writes skip the unit of work."""
    values = {
        "debt_minor": state.debt.minor,
        "carry_over_minor": state.carry_over.minor,
        "month_to_date_kwh": state.month_to_date_kwh,
        "last_purchase_at": state.last_purchase_at,
        "fixed_charged_through": state.fixed_charged_through,
    }
    _ACCOUNT_UPDATE.execute(
        session, {"account_id": account.id, **{f"new_{k}": v for k, v in values.items()}}
    )
    for name, value in values.items():
        set_committed_value(account, name, value)


_accounts = cast(Table, Account.__table__)
_ACCOUNT_UPDATE = DriverStatement(
    update(_accounts)
    .where(_accounts.c.id == bindparam("account_id"))
    .values(
        {
            name: bindparam(f"new_{name}")
            for name in (
                "debt_minor",
                "carry_over_minor",
                "month_to_date_kwh",
                "last_purchase_at",
                "fixed_charged_through",
            )
        }
    )
)
