"""The append-only, hash-chained audit log: the one writer for every sensitive act.

Each entry stores the SHA-256 of the previous entry's hash and its own canonical content,
so an edited, removed or reordered entry breaks the chain, which ``verify_chain`` reports.
A unique ``prev_hash`` forbids forks: two writers that raced on the same predecessor
cannot both commit. Database triggers refuse UPDATE and DELETE on the table.

Packages do not import this module; they accept any object with the same ``record``
method (see ``headend.audit.AuditSink``) and the composition root hands them this one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, MetaData, String, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from headend.models import NAMING_CONVENTION, BigId
from headend.sqltypes import UtcDateTime

GENESIS_HASH = "0" * 64


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class AuditEntry(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    ts: Mapped[datetime] = mapped_column(UtcDateTime())
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(128))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)
    prev_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hash: Mapped[str] = mapped_column(String(64), unique=True)


def _entry_hash(
    prev_hash: str, ts: datetime, actor: str, action: str, subject: str, detail: Mapping[str, Any]
) -> str:
    canonical = json.dumps(
        [prev_hash, ts.astimezone(UTC).isoformat(), actor, action, subject, detail],
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


class AuditLog:
    """Appends entries inside the caller's transaction, so the act and its record commit
    together or not at all."""

    def record(
        self,
        session: Session,
        *,
        actor: str,
        action: str,
        subject: str,
        detail: Mapping[str, Any] | None = None,
        now: datetime | None = None,
    ) -> AuditEntry:
        if session.get_bind().dialect.name == "postgresql":
            # Serialise appends so concurrent writers queue instead of failing on prev_hash.
            session.execute(text("SELECT pg_advisory_xact_lock(7243001)"))
        prev_hash = session.scalar(select(AuditEntry.hash).order_by(AuditEntry.id.desc()).limit(1))
        prev_hash = prev_hash or GENESIS_HASH
        ts = (now or datetime.now(UTC)).astimezone(UTC)
        clean_detail = json.loads(json.dumps(dict(detail or {}), sort_keys=True, default=str))
        entry = AuditEntry(
            ts=ts,
            actor=actor,
            action=action,
            subject=subject,
            detail=clean_detail,
            prev_hash=prev_hash,
            hash=_entry_hash(prev_hash, ts, actor, action, subject, clean_detail),
        )
        session.add(entry)
        session.flush()
        return entry


@dataclass(frozen=True, slots=True)
class ChainReport:
    entries: int
    first_broken_id: int | None
    problem: str | None

    @property
    def intact(self) -> bool:
        return self.first_broken_id is None


def verify_chain(session: Session) -> ChainReport:
    """Recompute every hash in order; report the first entry that does not match."""
    expected_prev = GENESIS_HASH
    count = 0
    for entry in session.scalars(select(AuditEntry).order_by(AuditEntry.id)):
        count += 1
        if entry.prev_hash != expected_prev:
            return ChainReport(count, entry.id, "previous-hash link broken (entry removed?)")
        recomputed = _entry_hash(
            entry.prev_hash, entry.ts, entry.actor, entry.action, entry.subject, entry.detail
        )
        if recomputed != entry.hash:
            return ChainReport(count, entry.id, "content does not match its hash (edited?)")
        expected_prev = entry.hash
    return ChainReport(count, None, None)
