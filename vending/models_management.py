"""The table of engineering and management tokens issued to meters (class 2: power
limit, clear credit, clear tamper...). On ``vending.models.Base`` with the other
vending tables, so one migration history covers them all."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from headend.models import BigId
from headend.sqltypes import UtcDateTime
from vending.models import Base


class ManagementTokenRecord(Base):
    """One management token: who issued it, why, for which meter and key, with which TID.

    ``(meter_id, tid)`` is unique like a vend's (both draw on the meter's one TID cursor);
    ``(issued_by, reference)`` is unique, so a retried request answers the token already
    made instead of making a second.
    """

    __tablename__ = "management_tokens"
    __table_args__ = (
        UniqueConstraint("meter_id", "tid"),
        UniqueConstraint("issued_by", "reference"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # The head-end's meter id (another package's table: linked by id, not foreign key).
    meter_id: Mapped[int] = mapped_column(BigInteger)
    meter_number: Mapped[str] = mapped_column(String(20))
    kind: Mapped[str] = mapped_column(String(32))
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    supply_group_code: Mapped[str] = mapped_column(String(6))
    key_revision: Mapped[int] = mapped_column(Integer)
    tid: Mapped[int] = mapped_column(Integer)
    token_digits: Mapped[str] = mapped_column(String(20))
    reference: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    issued_by: Mapped[str] = mapped_column(String(64))
    issued_role: Mapped[str] = mapped_column(String(16))
    issued_at: Mapped[datetime] = mapped_column(UtcDateTime())
