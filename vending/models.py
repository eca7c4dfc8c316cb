"""Vending tables."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Integer, LargeBinary, MetaData, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from headend.models import NAMING_CONVENTION, BigId
from headend.sqltypes import UtcDateTime


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
