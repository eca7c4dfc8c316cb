"""Head-end tables: the meter registry, readings, meter events and quarantined messages."""

from __future__ import annotations

import enum
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
# Coordinates keep seven decimal places of a degree (about 1 cm on the ground).
COORDINATE_TYPE = ScaledDecimal(7)


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
    lifecycle_changed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())

    # STS decoder key parameters (IEC 62055-41): what a key change token moves the meter
    # from and to. The vending key itself lives in vending's key store, never here.
    supply_group_code: Mapped[str | None] = mapped_column(String(6))
    tariff_index: Mapped[str | None] = mapped_column(String(2))
    key_revision: Mapped[int | None] = mapped_column(Integer)
    key_type: Mapped[int | None] = mapped_column(Integer)
    base_date: Mapped[int | None] = mapped_column(Integer)  # TID base year: 1993, 2014, 2035
    key_expiry_number: Mapped[int | None] = mapped_column(Integer)
    encryption_algorithm: Mapped[str | None] = mapped_column(String(2))  # "07", "09", "11"
    dkga: Mapped[str | None] = mapped_column(String(2))  # "02", "04"

    rated_max_current_a: Mapped[int | None] = mapped_column(Integer)

    # Where the meter hangs: free text for the technician, coordinates in WGS84 degrees.
    location: Mapped[str] = mapped_column(String(255), default="", server_default="")
    latitude: Mapped[Decimal | None] = mapped_column(COORDINATE_TYPE)
    longitude: Mapped[Decimal | None] = mapped_column(COORDINATE_TYPE)

    # Modbus addressing: a profile (protocols.modbus.profiles) plus TCP or RTU endpoint.
    modbus_profile: Mapped[str | None] = mapped_column(String(64))
    modbus_host: Mapped[str | None] = mapped_column(String(255))
    modbus_port: Mapped[int | None] = mapped_column(Integer)
    rtu_port: Mapped[str | None] = mapped_column(String(255))
    rtu_baud: Mapped[int | None] = mapped_column(Integer)
    rtu_parity: Mapped[str | None] = mapped_column(String(1))  # "N", "E", "O"
    modbus_unit: Mapped[int | None] = mapped_column(Integer)  # device id 1..247, TCP or RTU


class MeterLifecycleChange(Base):
    """One lifecycle move of one meter: the history behind ``Meter.lifecycle``.

    ``from_state`` is None for the entry written when the meter is registered.
    """

    __tablename__ = "meter_lifecycle_changes"
    __table_args__ = (Index("ix_meter_lifecycle_changes_meter_id", "meter_id", "changed_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    meter_id: Mapped[int] = mapped_column(ForeignKey("meters.id"))
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    changed_by: Mapped[str] = mapped_column(String(64))
    changed_at: Mapped[datetime] = mapped_column(UtcDateTime())
    reason: Mapped[str] = mapped_column(Text, default="")


class CommissioningRun(Base):
    """One attempt to commission one meter on site; its steps are stored as they run."""

    __tablename__ = "commissioning_runs"
    __table_args__ = (Index("ix_commissioning_runs_meter_id", "meter_id", "started_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    meter_id: Mapped[int] = mapped_column(ForeignKey("meters.id"))
    technician: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))  # running, passed, failed
    started_at: Mapped[datetime] = mapped_column(UtcDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    failed_step: Mapped[str | None] = mapped_column(String(32))
    failure_reason: Mapped[str] = mapped_column(Text, default="")
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class CommissioningStep(Base):
    """The outcome of one step of a commissioning run, with what was measured."""

    __tablename__ = "commissioning_steps"
    __table_args__ = (UniqueConstraint("run_id", "step"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("commissioning_runs.id"))
    position: Mapped[int] = mapped_column(Integer)
    step: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))  # passed, failed, skipped, pending
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    message: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[datetime] = mapped_column(UtcDateTime())
    finished_at: Mapped[datetime] = mapped_column(UtcDateTime())


class MeterReadStats(Base):
    """Read attempts and successes of one meter on one UTC day (fed by the pollers)."""

    __tablename__ = "meter_read_stats"

    meter_id: Mapped[int] = mapped_column(ForeignKey("meters.id"), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    successes: Mapped[int] = mapped_column(Integer, default=0)
    last_failure: Mapped[str] = mapped_column(Text, default="")


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
    # Validation's verdict (headend.validation): "measured" or "flagged" (held for an
    # operator). Rejected reads never take this slot; they are kept in rejected_messages.
    quality: Mapped[str] = mapped_column(String(16), default="measured", server_default="measured")
    flags: Mapped[str] = mapped_column(
        String(255), default="", server_default=""
    )  # comma-separated
    reason: Mapped[str] = mapped_column(Text, default="", server_default="")


class MeterEventRecord(Base):
    """An event a meter reported; ``severity`` other than "info" makes it an alarm, which
    an operator acknowledges (see headend/events.py)."""

    __tablename__ = "meter_events"
    __table_args__ = (
        UniqueConstraint("meter_id", "seq", "ts"),
        Index("ix_meter_events_severity", "severity", "acknowledged_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    meter_id: Mapped[int] = mapped_column(ForeignKey("meters.id"))
    seq: Mapped[int] = mapped_column(BigInteger)
    ts: Mapped[datetime] = mapped_column(UtcDateTime())
    kind: Mapped[str] = mapped_column(String(32))
    detail: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime())
    severity: Mapped[str] = mapped_column(String(16), default="info", server_default="info")
    acknowledged_by: Mapped[str | None] = mapped_column(String(64))
    acknowledged_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    ack_note: Mapped[str] = mapped_column(Text, default="", server_default="")


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


# --- VEE: estimates, the interval consumption stream and its consumers' offsets -------------


class ReadingEstimate(Base):
    """An estimated read of a cumulative register at a missing interval boundary.

    Always recomputed from the real reads on either side (headend.estimation); replaced
    when a late real read arrives. (meter, quantity, ts) is unique.
    """

    __tablename__ = "reading_estimates"
    __table_args__ = (UniqueConstraint("meter_id", "quantity", "ts"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    meter_id: Mapped[int] = mapped_column(ForeignKey("meters.id"))
    quantity: Mapped[str] = mapped_column(String(32))
    ts: Mapped[datetime] = mapped_column(UtcDateTime())
    value: Mapped[Decimal] = mapped_column(READING_VALUE_TYPE)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class ConsumptionEventRecord(Base):
    """One record of the append-only interval consumption stream; ``id`` is its offset.

    Never updated or deleted. A record whose (meter, quantity, t_start) was published
    before is a correction of it; ``supersedes`` is then the offset of the record it
    replaces. ``energy_kwh`` is exact at the register's resolution.
    """

    __tablename__ = "consumption_events"
    __table_args__ = (Index("ix_consumption_events_key", "meter_id", "quantity", "t_start", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    meter_id: Mapped[int] = mapped_column(ForeignKey("meters.id"))
    quantity: Mapped[str] = mapped_column(String(32))
    t_start: Mapped[datetime] = mapped_column(UtcDateTime())
    t_end: Mapped[datetime] = mapped_column(UtcDateTime())
    energy_kwh: Mapped[Decimal] = mapped_column(READING_VALUE_TYPE)
    quality: Mapped[str] = mapped_column(String(16))  # measured, estimated, flagged
    reason: Mapped[str] = mapped_column(Text, default="")
    supersedes: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class StreamOffset(Base):
    """How far one consumer has read the consumption stream (the last offset it handled)."""

    __tablename__ = "stream_offsets"

    consumer: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_offset: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
