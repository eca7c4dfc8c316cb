"""Vending tables."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Date,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from headend.models import NAMING_CONVENTION, BigId
from headend.sqltypes import ScaledDecimal, UtcDateTime


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class VendingKeyRecord(Base):
    """A vending key (per supply group and key revision), encrypted at rest.

    ``ciphertext`` is AES-256-GCM under the key-encryption key whose fingerprint is
    ``kek_id``; the key's identity is bound in as associated data, so a ciphertext moved
    to another row does not decrypt.
    """

    __tablename__ = "vending_keys"
    __table_args__ = (UniqueConstraint("supply_group_code", "key_revision"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    supply_group_code: Mapped[str] = mapped_column(String(6))
    key_revision: Mapped[int] = mapped_column(Integer)
    key_type: Mapped[int] = mapped_column(Integer)
    base_date: Mapped[int] = mapped_column(Integer)
    algorithm: Mapped[str] = mapped_column(String(2))
    dkga: Mapped[str] = mapped_column(String(2))
    key_expiry_number: Mapped[int] = mapped_column(Integer)
    kek_id: Mapped[str] = mapped_column(String(16))
    nonce: Mapped[bytes] = mapped_column(LargeBinary)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    retired_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class Customer(Base):
    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    address: Mapped[str] = mapped_column(Text, default="")
    phone: Mapped[str] = mapped_column(String(32), default="")
    email: Mapped[str] = mapped_column(String(128), default="")
    category: Mapped[str] = mapped_column(String(16))  # residential, commercial, industrial
    # Why the customer must not be disconnected without an operator (life_support, hospital...).
    protection: Mapped[str | None] = mapped_column(String(32))
    # Nominal voltage of the customer's supply (230, 400, 11 000...): one of the grading facts.
    supply_voltage_v: Mapped[int] = mapped_column(Integer, default=230, server_default="230")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Account(Base):
    """A customer's prepaid account: the pricing state that carries from vend to vend."""

    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account_number: Mapped[str] = mapped_column(String(20), unique=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    currency: Mapped[str] = mapped_column(String(3))
    tariff_code: Mapped[str] = mapped_column(ForeignKey("tariffs.code"))
    # Contracted capacity for two-part tariffs; whether free basic units apply.
    capacity_kva: Mapped[Decimal | None] = mapped_column(ScaledDecimal(3))
    free_units_eligible: Mapped[bool] = mapped_column(default=True)
    debt_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    carry_over_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    month_to_date_kwh: Mapped[Decimal] = mapped_column(ScaledDecimal(3), default=Decimal(0))
    last_purchase_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    fixed_charged_through: Mapped[date | None] = mapped_column(Date)
    # The arrears recovery rule as vending.debt.DebtRecoveryRule.to_document() stores it.
    debt_recovery: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class AccountMeter(Base):
    """Which meter is on which account, with history: at most one open link per meter."""

    __tablename__ = "account_meters"
    __table_args__ = (
        Index(
            "uq_account_meters_open_meter",
            "meter_id",
            unique=True,
            sqlite_where=text("unlinked_at IS NULL"),
            postgresql_where=text("unlinked_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    # The head-end's meter id (another package's table: linked by id, not foreign key).
    meter_id: Mapped[int] = mapped_column(BigInteger)
    linked_at: Mapped[datetime] = mapped_column(UtcDateTime())
    linked_by: Mapped[str] = mapped_column(String(64))
    unlinked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class TariffRecord(Base):
    """A tariff's identity; its terms are in its versions."""

    __tablename__ = "tariffs"

    code: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    currency: Mapped[str] = mapped_column(String(3))
    currency_minor_digits: Mapped[int | None] = mapped_column(Integer)
    timezone: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class TariffVersionRecord(Base):
    """One version of a tariff as its JSON document (vending.tariff_documents)."""

    __tablename__ = "tariff_versions"
    __table_args__ = (UniqueConstraint("tariff_code", "effective_from"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tariff_code: Mapped[str] = mapped_column(ForeignKey("tariffs.code"))
    effective_from: Mapped[date] = mapped_column(Date)
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    created_by: Mapped[str] = mapped_column(String(64))


class VendingPoint(Base):
    """A counter or agent. ``outstanding_minor`` is cash taken and not yet banked; vending
    stops when it would pass ``credit_limit_minor``."""

    __tablename__ = "vending_points"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    code: Mapped[str] = mapped_column(String(16), unique=True)
    name: Mapped[str] = mapped_column(String(128))
    currency: Mapped[str] = mapped_column(String(3))
    credit_limit_minor: Mapped[int] = mapped_column(BigInteger)
    outstanding_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    active: Mapped[bool] = mapped_column(default=True)
    # The last receipt number's count: a counter vend's receipt is "<code>-<count>".
    receipts_issued: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class Shift(Base):
    __tablename__ = "shifts"
    __table_args__ = (
        Index(
            "uq_shifts_open_clerk",
            "clerk",
            unique=True,
            sqlite_where=text("closed_at IS NULL"),
            postgresql_where=text("closed_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    vending_point_id: Mapped[int] = mapped_column(ForeignKey("vending_points.id"))
    clerk: Mapped[str] = mapped_column(String(64))
    opened_at: Mapped[datetime] = mapped_column(UtcDateTime())
    opening_float_minor: Mapped[int] = mapped_column(BigInteger)
    closed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    declared_cash_minor: Mapped[int | None] = mapped_column(BigInteger)
    expected_cash_minor: Mapped[int | None] = mapped_column(BigInteger)


class Vend(Base):
    """One sale: the payment, its priced breakdown and its token, committed together.

    ``(channel, reference)`` is unique, so a retried request finds the vend it already
    made instead of making a second; ``(meter_id, tid)`` is unique, so no meter ever gets
    two tokens with one TID.
    """

    __tablename__ = "vends"
    __table_args__ = (
        UniqueConstraint("channel", "reference"),
        UniqueConstraint("meter_id", "tid"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    receipt_number: Mapped[str] = mapped_column(String(32), unique=True)
    channel: Mapped[str] = mapped_column(String(32))
    reference: Mapped[str] = mapped_column(String(64))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    meter_id: Mapped[int] = mapped_column(BigInteger)
    shift_id: Mapped[int | None] = mapped_column(ForeignKey("shifts.id"))
    vending_point_id: Mapped[int | None] = mapped_column(ForeignKey("vending_points.id"))
    operator: Mapped[str] = mapped_column(String(64))
    payment_method: Mapped[str] = mapped_column(String(16))
    currency: Mapped[str] = mapped_column(String(3))
    tendered_minor: Mapped[int] = mapped_column(BigInteger)
    units_kwh: Mapped[Decimal] = mapped_column(ScaledDecimal(3))
    breakdown: Mapped[dict[str, Any]] = mapped_column(JSON)
    token_digits: Mapped[str | None] = mapped_column(String(20))
    tid: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="issued")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    reprints: Mapped[int] = mapped_column(Integer, default=0)
    reversed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    reversed_by: Mapped[str | None] = mapped_column(String(64))
    reversal_reason: Mapped[str | None] = mapped_column(Text)
    # The account's pricing state just before a counter vend (vending.reversals.
    # account_state), so that a reversal puts it back exactly; None for a channel's vend,
    # which is reversed in its channel.
    account_before: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class MeterTidCursor(Base):
    """The last TID issued to a meter under its current key (locked while vending)."""

    __tablename__ = "meter_tids"

    meter_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    supply_group_code: Mapped[str] = mapped_column(String(6))
    key_revision: Mapped[int] = mapped_column(Integer)
    base_date: Mapped[int] = mapped_column(Integer)
    last_tid: Mapped[int] = mapped_column(Integer)


class LedgerEntry(Base):
    """A change of a central-balance account's money balance; the balance is their sum.

    ``kind``: payment, consumption, fixed_charge, debt_recovery, adjustment,
    emergency_credit, reversal. ``reference`` ties the entry to what caused it and is
    unique per kind, so replaying the cause never books it twice.
    """

    __tablename__ = "ledger_entries"
    __table_args__ = (UniqueConstraint("account_id", "kind", "reference"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    kind: Mapped[str] = mapped_column(String(24))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    reference: Mapped[str] = mapped_column(String(96))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class CentralAccountState(Base):
    """The balance engine's memory of one central-balance account."""

    __tablename__ = "central_account_states"

    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    converted_at: Mapped[datetime] = mapped_column(UtcDateTime())
    last_top_up_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    last_top_up_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    exhausted_since: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # Percent thresholds already announced since the last top-up, e.g. ["30", "10"].
    alerts_sent: Mapped[list[str]] = mapped_column(JSON, default=list)
    emergency_credit_outstanding_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    emergency_credit_taken_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # What the engine last asked of the supply: "connected" or "disconnected".
    supply_requested: Mapped[str] = mapped_column(String(16), default="connected")
    last_decision_id: Mapped[int | None] = mapped_column(BigInteger)
    # The last payment (ledger id) taken into account: payments commit in id order per
    # account (under the account's lock), not across accounts.
    payments_taken_through: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # Weekly debt instalments: week 1 ends 7 days after ``debt_instalments_from`` (when
    # the engine first saw a weekly rule); weeks up to ``debt_weeks_booked`` are settled.
    debt_instalments_from: Mapped[datetime | None] = mapped_column(UtcDateTime())
    debt_weeks_booked: Mapped[int] = mapped_column(Integer, server_default="0")


class RatedInterval(Base):
    """The charge booked for one interval of one meter; a correction books the difference."""

    __tablename__ = "rated_intervals"
    __table_args__ = (UniqueConstraint("meter_id", "quantity", "t_start"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    meter_id: Mapped[int] = mapped_column(BigInteger)
    quantity: Mapped[str] = mapped_column(String(32))
    t_start: Mapped[datetime] = mapped_column(UtcDateTime())
    t_end: Mapped[datetime] = mapped_column(UtcDateTime())
    energy_kwh: Mapped[Decimal] = mapped_column(ScaledDecimal(6))
    charge_minor: Mapped[int] = mapped_column(BigInteger)
    source_offset: Mapped[int] = mapped_column(BigInteger)
    rated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class HeldConsumption(Base):
    """Consumption the engine would not charge, kept with the reason for an operator."""

    __tablename__ = "held_consumption"
    __table_args__ = (UniqueConstraint("source_offset"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    source_offset: Mapped[int] = mapped_column(BigInteger)
    meter_id: Mapped[int] = mapped_column(BigInteger)
    t_start: Mapped[datetime] = mapped_column(UtcDateTime())
    t_end: Mapped[datetime] = mapped_column(UtcDateTime())
    energy_kwh: Mapped[Decimal] = mapped_column(ScaledDecimal(6))
    reason: Mapped[str] = mapped_column(Text)
    held_at: Mapped[datetime] = mapped_column(UtcDateTime())
    resolved_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # Who resolved it and how (e.g. "billed by estimate", "meter was not ours then").
    resolved_by: Mapped[str | None] = mapped_column(String(64))
    resolution_note: Mapped[str | None] = mapped_column(Text)


class BalanceDecision(Base):
    """Every supply decision with its reason; a disconnect or reconnect names its command."""

    __tablename__ = "balance_decisions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    meter_id: Mapped[int] = mapped_column(BigInteger)
    decided_at: Mapped[datetime] = mapped_column(UtcDateTime())
    action: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    balance_minor: Mapped[int] = mapped_column(BigInteger)
    not_before: Mapped[datetime | None] = mapped_column(UtcDateTime())
    command_id: Mapped[int | None] = mapped_column(BigInteger)
    # Why the head-end refused the command (e.g. a meter it cannot command): for an operator.
    command_error: Mapped[str | None] = mapped_column(Text)


class Notification(Base):
    """The notification outbox: one row per message and channel, written with the event
    and delivered later by vending.notifications.NotificationDispatcher.

    ``status``: pending (to be sent, at or after ``next_attempt_at``), delivered, or
    failed (gave up after the last attempt or a permanent refusal; ``last_error`` says
    why). A dispatcher holds a row while it sends (``claimed_by`` until
    ``claimed_until``); a lease that runs out is taken over, so a crashed dispatcher's
    messages are sent again (at least once; receivers de-duplicate on the row's key).
    """

    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_due", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    kind: Mapped[str] = mapped_column(String(32))
    # email, sms, webhook or record (the recording/log adapter).
    channel: Mapped[str] = mapped_column(String(16), server_default="record")
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    status: Mapped[str] = mapped_column(String(16), server_default="pending")
    next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_until: Mapped[datetime | None] = mapped_column(UtcDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)


class EngineCursor(Base):
    """Where a stream consumer of the money side is (its offset), stored with its effects."""

    __tablename__ = "engine_cursors"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger, default=0)
