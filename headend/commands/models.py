"""Command-queue tables: every command to a meter, and what the head-end last read back.

A command row is written before anything goes on the wire and is only ever moved
forward (see ``headend.commands.machine``). Every change goes through the ORM with
``version`` as its version counter, so two workers that race on one row cannot both
win: the loser's UPDATE matches no row and SQLAlchemy raises ``StaleDataError``.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from headend.models import Base, BigId
from headend.sqltypes import UtcDateTime


class CommandState(enum.StrEnum):
    """Where a command is in its life. The last three are final."""

    QUEUED = "queued"  # persisted; waiting for its turn on the meter or for a retry
    SENT = "sent"  # on the wire or answered and being confirmed by read-back
    CONFIRMED = "confirmed"
    FAILED = "failed"
    EXPIRED = "expired"

    @property
    def final(self) -> bool:
        return self in _FINAL


_FINAL = frozenset({CommandState.CONFIRMED, CommandState.FAILED, CommandState.EXPIRED})
OPEN_STATES = (CommandState.QUEUED.value, CommandState.SENT.value)


class CommandStep(enum.StrEnum):
    """What the dispatcher does next with a command (finer than the state)."""

    SEND = "send"  # queued: send the command at next_action_at
    AWAIT_REPLY = "await_reply"  # sent: wait for the meter's reply until next_action_at
    VERIFY = "verify"  # sent: send a read-back request at next_action_at
    AWAIT_READBACK = "await_readback"  # sent: wait for the read-back reply until next_action_at
    DONE = "done"  # final state


class Confirmation(enum.StrEnum):
    """How a confirmed command was confirmed."""

    READBACK = "readback"  # the meter acknowledged it and a read-back shows the new state
    ALREADY_IN_STATE = "already_in_state"  # a read-back showed the state: nothing was sent
    METER_REPLY = "meter_reply"  # the meter's own reply is the confirmation (token, clock, read)


class MeterCommand(Base):
    __tablename__ = "meter_commands"
    __table_args__ = (
        # The dispatcher's scan: open commands due for action.
        Index("ix_meter_commands_due", "state", "next_action_at"),
        # Per-meter order: the open command with the lowest id is the meter's head.
        Index("ix_meter_commands_meter", "meter_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    meter_id: Mapped[int] = mapped_column(ForeignKey("meters.id"))
    name: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The id the command carries on the wire; retries re-use it so a meter that already
    # executed it answers again instead of executing twice. Read-backs use "<id>.r<n>".
    correlation_id: Mapped[str] = mapped_column(String(48), unique=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), unique=True)
    requested_by: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)

    state: Mapped[str] = mapped_column(String(16))
    step: Mapped[str] = mapped_column(String(16))
    # True while the command has only been verified, not sent (the meter looked as if it
    # was already in the requested state).
    verify_first: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # times the command was sent
    readbacks: Mapped[int] = mapped_column(Integer, default=0)  # read-back requests sent
    last_error: Mapped[str | None] = mapped_column(Text)
    confirmation: Mapped[str | None] = mapped_column(String(24))
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    sent_by: Mapped[str | None] = mapped_column(String(64))

    requested_at: Mapped[datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())
    next_action_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    first_sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    last_sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    acknowledged_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())

    version: Mapped[int] = mapped_column(Integer)

    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012 - SQLAlchemy's own idiom


class MeterControlState(Base):
    """The relay and power limit as last read from the meter (a hint, always re-verified)."""

    __tablename__ = "meter_control_state"

    meter_id: Mapped[int] = mapped_column(ForeignKey("meters.id"), primary_key=True)
    relay_closed: Mapped[bool | None] = mapped_column(Boolean)
    # None: no limit set (only meaningful once observed_at is set).
    power_limit_w: Mapped[int | None] = mapped_column(Integer)
    observed_at: Mapped[datetime] = mapped_column(UtcDateTime())
    command_id: Mapped[int | None] = mapped_column(ForeignKey("meter_commands.id"))
