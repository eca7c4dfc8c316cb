"""The key change workflow's table: a meter's move to a new decoder key, from request to
completion (or cancellation).

It lives on ``vending.models.Base`` so that one metadata (and one migration history)
covers every vending table. ``meter_id`` names a head-end meter without a foreign key,
as ``vends.meter_id`` does: the packages share a database, not tables.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Boolean, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from headend.models import BigId
from headend.sqltypes import UtcDateTime
from vending.models import Base

KEY_CHANGE_PENDING = "pending"
KEY_CHANGE_COMPLETED = "completed"
KEY_CHANGE_CANCELLED = "cancelled"


class KeyChangeRecord(Base):
    """A requested key change: the meter's key before and after, and the section tokens
    (encrypted under the old key, in entry order) that move it.

    At most one per meter is ``pending`` (a partial unique index). It is completed by
    the vend that prints its tokens (``completed_vend_*`` name that vend by its
    channel and reference) or by a technician who entered them; or cancelled.
    """

    __tablename__ = "key_changes"
    __table_args__ = (
        Index(
            "uq_key_changes_one_pending_per_meter",
            "meter_id",
            unique=True,
            sqlite_where=text("status = 'pending'"),
            postgresql_where=text("status = 'pending'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    meter_id: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    from_supply_group_code: Mapped[str] = mapped_column(String(6))
    from_tariff_index: Mapped[str] = mapped_column(String(2))
    from_key_revision: Mapped[int] = mapped_column(Integer)
    from_base_date: Mapped[int] = mapped_column(Integer)
    to_supply_group_code: Mapped[str] = mapped_column(String(6))
    to_tariff_index: Mapped[str] = mapped_column(String(2))
    to_key_revision: Mapped[int] = mapped_column(Integer)
    to_base_date: Mapped[int] = mapped_column(Integer)
    to_key_expiry_number: Mapped[int] = mapped_column(Integer)
    rollover: Mapped[bool] = mapped_column(Boolean)
    # The 20-digit section tokens in entry order (they only work on this meter's old key).
    tokens: Mapped[list[str]] = mapped_column(JSON)
    reason: Mapped[str] = mapped_column(Text, default="")
    requested_by: Mapped[str] = mapped_column(String(64))
    requested_at: Mapped[datetime] = mapped_column(UtcDateTime())
    completed_by: Mapped[str | None] = mapped_column(String(64))
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    completed_vend_channel: Mapped[str | None] = mapped_column(String(32))
    completed_vend_reference: Mapped[str | None] = mapped_column(String(64))
    cancelled_by: Mapped[str | None] = mapped_column(String(64))
    cancelled_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    cancel_reason: Mapped[str | None] = mapped_column(Text)
