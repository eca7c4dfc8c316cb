"""Tables of the clerk counter: what a reversal needs to undo a vend, tokens known to be
accepted by their meter, and cash banked from vending points.

They live on ``vending.models.Base`` so that one metadata (and one migration history)
covers every vending table.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from headend.models import BigId
from headend.sqltypes import UtcDateTime
from vending.models import Base


class TokenAcceptance(Base):
    """A meter told us it accepted the token with this TID (a ``token_accepted`` meter
    event, or a technician's confirmation). A token-mode vend whose token is recorded here
    can no longer be reversed: the energy is already in the meter."""

    __tablename__ = "token_acceptances"
    __table_args__ = (UniqueConstraint("meter_id", "tid"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    meter_id: Mapped[int] = mapped_column(BigInteger)
    tid: Mapped[int] = mapped_column(Integer)
    accepted_at: Mapped[datetime] = mapped_column(UtcDateTime())
    source: Mapped[str] = mapped_column(String(32))


class VendingPointBanking(Base):
    """Cash taken to the bank from a vending point (resets its outstanding amount)."""

    __tablename__ = "vending_point_bankings"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    vending_point_id: Mapped[int] = mapped_column(ForeignKey("vending_points.id"))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    reference: Mapped[str] = mapped_column(String(64))
    banked_at: Mapped[datetime] = mapped_column(UtcDateTime())
    banked_by: Mapped[str] = mapped_column(String(64))
