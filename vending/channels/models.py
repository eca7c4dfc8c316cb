"""Tables of the bank and mobile-money channel API (on the vending metadata)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Date,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from headend.models import BigId
from headend.sqltypes import UtcDateTime
from vending.models import Base


class Channel(Base):
    """A bank, switch or mobile-money operator allowed to sell credit.

    The signing secret is AES-256-GCM encrypted under the key-encryption key whose
    fingerprint is ``kek_id``, with the key id bound in as associated data; it is shown
    once, when the channel is created. Amounts are minor units of ``currency``.
    """

    __tablename__ = "channels"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    code: Mapped[str] = mapped_column(String(24), unique=True)
    name: Mapped[str] = mapped_column(String(128))
    # What the vend records as its payment method: bank or mobile_money.
    payment_method: Mapped[str] = mapped_column(String(16))
    key_id: Mapped[str] = mapped_column(String(40), unique=True)
    kek_id: Mapped[str] = mapped_column(String(16))
    secret_nonce: Mapped[bytes] = mapped_column(LargeBinary)
    secret_ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    currency: Mapped[str] = mapped_column(String(3))
    min_amount_minor: Mapped[int] = mapped_column(BigInteger)
    max_amount_minor: Mapped[int] = mapped_column(BigInteger)
    daily_limit_minor: Mapped[int] = mapped_column(BigInteger)
    # Signed requests per minute, per API process (a token bucket).
    rate_limit_per_minute: Mapped[int] = mapped_column(Integer)
    reversal_window_s: Mapped[int] = mapped_column(Integer)
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    created_by: Mapped[str] = mapped_column(String(64))


class ChannelNonce(Base):
    """A nonce a channel has used; a second request with it inside the window is a replay.

    Rows older than ``expires_at`` are useless (their timestamp would be stale anyway)
    and are deleted as new ones arrive.
    """

    __tablename__ = "channel_nonces"
    __table_args__ = (
        UniqueConstraint("channel_id", "nonce"),
        Index("ix_channel_nonces_expires_at", "expires_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    channel_id: Mapped[int] = mapped_column(ForeignKey("channels.id"))
    nonce: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())


class ChannelPurchase(Base):
    """A channel's purchase and the exact bytes of our answer to it.

    Committed in the same transaction as the vend, so a retry after any failure finds
    either nothing (the vend did not happen) or the answer the channel should have
    received. ``request_sha256`` identifies the request's content (meter or account,
    amount, currency): the same reference with another content is a conflict.
    ``account_before`` is the account's pricing state before the vend, which a reversal
    puts back. ``vend_id`` is None when a reversal advice refused the purchase.
    """

    __tablename__ = "channel_purchases"
    __table_args__ = (
        UniqueConstraint("channel_id", "reference"),
        Index("ix_channel_purchases_channel_id_business_date", "channel_id", "business_date"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    channel_id: Mapped[int] = mapped_column(ForeignKey("channels.id"))
    reference: Mapped[str] = mapped_column(String(64))
    request_sha256: Mapped[str] = mapped_column(String(64))
    vend_id: Mapped[int | None] = mapped_column(ForeignKey("vends.id"))
    # completed, reversed, refused (a reversal advice came first)
    status: Mapped[str] = mapped_column(String(16))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    business_date: Mapped[date] = mapped_column(Date)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    response_status: Mapped[int] = mapped_column(Integer)
    response_body: Mapped[bytes] = mapped_column(LargeBinary)
    account_before: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    confirmed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    reversed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class ChannelAdvice(Base):
    """A confirm or reverse advice, kept whatever the order it arrives in.

    ``outcome``: pending (its purchase is not known yet), applied, refused (with
    ``refusal_code``). One row per (channel, reference, kind): a re-sent advice finds it.
    """

    __tablename__ = "channel_advices"
    __table_args__ = (UniqueConstraint("channel_id", "reference", "kind"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    channel_id: Mapped[int] = mapped_column(ForeignKey("channels.id"))
    reference: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(8))
    outcome: Mapped[str] = mapped_column(String(16))
    refusal_code: Mapped[str | None] = mapped_column(String(40))
    received_at: Mapped[datetime] = mapped_column(UtcDateTime())
    resolved_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class ReconciliationRun(Base):
    """One settlement file a channel uploaded for a business day, and its counts."""

    __tablename__ = "channel_reconciliations"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    channel_id: Mapped[int] = mapped_column(ForeignKey("channels.id"))
    business_date: Mapped[date] = mapped_column(Date)
    file_sha256: Mapped[str] = mapped_column(String(64))
    uploaded_at: Mapped[datetime] = mapped_column(UtcDateTime())
    matched: Mapped[int] = mapped_column(Integer)
    missing_ours: Mapped[int] = mapped_column(Integer)
    missing_theirs: Mapped[int] = mapped_column(Integer)
    amount_mismatch: Mapped[int] = mapped_column(Integer)


class ReconciliationItem(Base):
    """One reference's outcome in a reconciliation run (amounts in minor units)."""

    __tablename__ = "channel_reconciliation_items"
    __table_args__ = (UniqueConstraint("run_id", "reference"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("channel_reconciliations.id"))
    reference: Mapped[str] = mapped_column(String(64))
    # matched, missing_ours, missing_theirs, amount_mismatch
    outcome: Mapped[str] = mapped_column(String(16))
    their_amount_minor: Mapped[int | None] = mapped_column(BigInteger)
    our_amount_minor: Mapped[int | None] = mapped_column(BigInteger)
    their_time: Mapped[datetime | None] = mapped_column(UtcDateTime())
    our_time: Mapped[datetime | None] = mapped_column(UtcDateTime())
