"""Tables of the Modbus poller: poll outcomes, communication health and leases.

They live on the head-end's ``Base`` so one Alembic history covers them (migration 0006).
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import Boolean, Date, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from headend.models import Base, BigId
from headend.sqltypes import UtcDateTime

__all__ = ["ModbusCommHealth", "ModbusLease", "ModbusPollOutcome"]


class ModbusPollOutcome(Base):
    """One poll of one meter for one group: stored (``ok``) or failed with its reason.

    ``interval_ts`` is the interval boundary the poll belongs to (the stored readings'
    ``ts``); for an on-demand read it is the moment of the read.
    """

    __tablename__ = "modbus_poll_outcomes"
    __table_args__ = (
        Index("ix_modbus_poll_outcomes_meter_interval", "meter_id", "poll_group", "interval_ts"),
        Index("ix_modbus_poll_outcomes_finished_at", "finished_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    meter_id: Mapped[int] = mapped_column(ForeignKey("meters.id"))
    poll_group: Mapped[str] = mapped_column(String(32))
    interval_ts: Mapped[datetime] = mapped_column(UtcDateTime())
    ok: Mapped[bool] = mapped_column(Boolean)
    # A FailureReason value, None when ok.
    reason: Mapped[str | None] = mapped_column(String(32), default=None)
    exception_code: Mapped[int | None] = mapped_column(Integer, default=None)
    detail: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    requests: Mapped[int] = mapped_column(Integer, default=0)
    channel: Mapped[str] = mapped_column(String(160))
    worker: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime())
    finished_at: Mapped[datetime] = mapped_column(UtcDateTime())


class ModbusCommHealth(Base):
    """Communication-health counters per meter and (UTC) day of the polled intervals."""

    __tablename__ = "modbus_comm_health"

    meter_id: Mapped[int] = mapped_column(ForeignKey("meters.id"), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    polls_ok: Mapped[int] = mapped_column(Integer, default=0)
    polls_failed: Mapped[int] = mapped_column(Integer, default=0)
    requests: Mapped[int] = mapped_column(Integer, default=0)
    timeouts: Mapped[int] = mapped_column(Integer, default=0)
    modbus_exceptions: Mapped[int] = mapped_column(Integer, default=0)
    frame_errors: Mapped[int] = mapped_column(Integer, default=0)
    connection_errors: Mapped[int] = mapped_column(Integer, default=0)
    bad_replies: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    last_ok_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), default=None)
    last_failure_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), default=None)
    last_failure_reason: Mapped[str | None] = mapped_column(String(32), default=None)


class ModbusLease(Base):
    """Who may talk to a resource until when: a channel (``tcp:host:port`` gateway or
    ``rtu:/dev/ttyX`` serial line) or a single meter (``meter:<id>``).

    Claimed with one upsert that only takes over an expired row or renews one's own, so
    it is atomic on PostgreSQL and SQLite alike.
    """

    __tablename__ = "modbus_leases"

    resource: Mapped[str] = mapped_column(String(200), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    acquired_at: Mapped[datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())
