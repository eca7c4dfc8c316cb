"""Head-end tables: the meter registry, readings, meter events and quarantined messages."""

from __future__ import annotations

import enum
from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from headend.sqltypes import ScaledDecimal, UtcDateTime

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit key.
BigId = BigInteger().with_variant(Integer(), "sqlite")


# Readings keep six decimal places (micro-units); see ScaledDecimal for the rounding rule.
READING_VALUE_TYPE = ScaledDecimal(6)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class MeterProtocol(enum.StrEnum):
    MQTT = "mqtt"
    MODBUS_TCP = "modbus_tcp"
    MODBUS_RTU = "modbus_rtu"


class PrepaidMode(enum.StrEnum):
    TOKEN = "token"
    CENTRAL = "central"


class MeterLifecycle(enum.StrEnum):
    IN_STOCK = "in_stock"
    INSTALLED = "installed"
    COMMISSIONED = "commissioned"
    ACTIVE = "active"
    SUSPENDED = "suspended"
    DECOMMISSIONED = "decommissioned"


class Meter(Base):
    __tablename__ = "meters"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    serial: Mapped[str] = mapped_column(String(64), unique=True)
    # The id the meter uses on its transport (the MQTT topic level); defaults to the serial.
    comm_id: Mapped[str] = mapped_column(String(64), unique=True)
    meter_number: Mapped[str | None] = mapped_column(String(20), unique=True)
    model: Mapped[str] = mapped_column(String(64), default="")
    phases: Mapped[int] = mapped_column(Integer, default=1)
    protocol: Mapped[str] = mapped_column(String(16), default=MeterProtocol.MQTT.value)
    prepaid_mode: Mapped[str] = mapped_column(String(16), default=PrepaidMode.TOKEN.value)
    lifecycle: Mapped[str] = mapped_column(String(16), default=MeterLifecycle.IN_STOCK.value)
    online: Mapped[bool | None] = mapped_column(default=None)
    last_seen_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Reading(Base):
    """One register value at one instant. (meter, quantity, ts) is unique: no doubles."""

    __tablename__ = "readings"
    __table_args__ = (UniqueConstraint("meter_id", "quantity", "ts"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    meter_id: Mapped[int] = mapped_column(ForeignKey("meters.id"))
    quantity: Mapped[str] = mapped_column(String(32))
    ts: Mapped[datetime] = mapped_column(UtcDateTime())
    value: Mapped[Decimal] = mapped_column(READING_VALUE_TYPE)
    source: Mapped[str] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(UtcDateTime())


class MeterEventRecord(Base):
    __tablename__ = "meter_events"
    __table_args__ = (UniqueConstraint("meter_id", "seq", "ts"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    meter_id: Mapped[int] = mapped_column(ForeignKey("meters.id"))
    seq: Mapped[int] = mapped_column(BigInteger)
    ts: Mapped[datetime] = mapped_column(UtcDateTime())
    kind: Mapped[str] = mapped_column(String(32))
    detail: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime())


class RejectedMessage(Base):
    """A message the head-end could not accept, kept whole with the reason for inspection."""

    __tablename__ = "rejected_messages"
    __table_args__ = (Index("ix_rejected_messages_received_at", "received_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    source: Mapped[str] = mapped_column(String(16))
    topic: Mapped[str] = mapped_column(Text)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    reason: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime())
