"""Tables of the balance engine's operator side: what operators decided about accounts
the engine put on the operator's list (protected customers with an exhausted balance).

They live on ``vending.models.Base`` so that one metadata (and one migration history)
covers every vending table.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from headend.models import BigId
from headend.sqltypes import UtcDateTime
from vending.models import Base


class OperatorReview(Base):
    """One operator's act on an operator-list entry: ``acknowledge`` (seen, supply stays
    on) or ``note`` (a remark, e.g. "hospital called, paying tomorrow"). Append-only: a
    later review adds a row, it never edits an earlier one."""

    __tablename__ = "balance_operator_reviews"
    __table_args__ = (Index("ix_balance_operator_reviews_decision", "decision_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    # The operator_list decision reviewed: a new listing is a new decision, reviewed afresh.
    decision_id: Mapped[int] = mapped_column(ForeignKey("balance_decisions.id"))
    action: Mapped[str] = mapped_column(String(16))
    note: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
