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
from typing import Any, cast

from sqlalchemy import JSON, MetaData, String, Table, bindparam, event, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, SessionTransaction, mapped_column

from headend.models import NAMING_CONVENTION, BigId
from headend.sqltypes import UtcDateTime
from vending.driver_statements import DriverStatement

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
    together or not at all.

    ``record`` only notes the entry; the entries a transaction recorded are chained and
    written just before it commits (``_write_pending``). The chain's serialisation (the
    PostgreSQL advisory lock, SQLite's write lock) then covers the last moments of the
    transaction instead of everything after the act: concurrent vends overlap until
    they commit. An entry recorded inside a savepoint that is rolled back is dropped
    with it.
    """

    def record(
        self,
        session: Session,
        *,
        actor: str,
        action: str,
        subject: str,
        detail: Mapping[str, Any] | None = None,
        now: datetime | None = None,
    ) -> None:
        ts = (now or datetime.now(UTC)).astimezone(UTC)
        clean_detail = json.loads(json.dumps(dict(detail or {}), sort_keys=True, default=str))
        pending: list[_Pending] = session.info.setdefault(_PENDING_KEY, [])
        pending.append(
            _Pending(session.get_nested_transaction(), ts, actor, action, subject, clean_detail)
        )


_PENDING_KEY = "gridvend.audit.pending"
# The key of the PostgreSQL advisory lock that orders appends (the channel API and the
# ingest stream use other keys).
_APPEND_LOCK_KEY = 7243001
_table = cast(Table, AuditEntry.__table__)
# Run on the driver directly: every vend appends an entry (vending.driver_statements).
_APPEND_LOCK = DriverStatement(select(func.pg_advisory_xact_lock(bindparam("key"))))
_LAST_HASH = DriverStatement(select(_table.c.hash).order_by(_table.c.id.desc()).limit(1))
_INSERT = DriverStatement(
    _table.insert(), columns=["ts", "actor", "action", "subject", "detail", "prev_hash", "hash"]
)


@dataclass(frozen=True, slots=True)
class _Pending:
    # The savepoint the entry was recorded in (None: the transaction itself).
    savepoint: SessionTransaction | None
    ts: datetime
    actor: str
    action: str
    subject: str
    detail: dict[str, Any]


@event.listens_for(Session, "before_commit")
def _write_pending(session: Session) -> None:
    if session.get_nested_transaction() is not None:
        return  # A savepoint is released: its entries wait for the real commit.
    pending: list[_Pending] | None = session.info.get(_PENDING_KEY)
    if not pending:
        return
    # The act's own changes first, so a failing flush raises before the lock is taken.
    session.flush()
    if session.connection().dialect.name == "postgresql":
        # Serialise appends so concurrent writers queue instead of failing on prev_hash;
        # held to the commit that follows.
        _APPEND_LOCK.execute(session, {"key": _APPEND_LOCK_KEY})
    prev_hash = _LAST_HASH.scalar(session, {}) or GENESIS_HASH
    rows = []
    for entry in pending:
        entry_hash = _entry_hash(
            prev_hash, entry.ts, entry.actor, entry.action, entry.subject, entry.detail
        )
        rows.append(
            {
                "ts": entry.ts,
                "actor": entry.actor,
                "action": entry.action,
                "subject": entry.subject,
                "detail": entry.detail,
                "prev_hash": prev_hash,
                "hash": entry_hash,
            }
        )
        prev_hash = entry_hash
    # One row per statement: ids follow the chain's order on every backend.
    for row in rows:
        _INSERT.execute(session, row)
    pending.clear()


@event.listens_for(Session, "after_soft_rollback")
def _drop_rolled_back(session: Session, transaction: SessionTransaction) -> None:
    pending: list[_Pending] | None = session.info.get(_PENDING_KEY)
    if not pending:
        return
    if not transaction.nested:
        # The transaction itself (or a part of it that dooms it) was rolled back.
        if transaction.parent is None:
            pending.clear()
        return
    pending[:] = [e for e in pending if not _inside(e.savepoint, transaction)]


@event.listens_for(Session, "after_transaction_end")
def _forget(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None and session.info.get(_PENDING_KEY):
        # Closed without commit (commit writes and clears the list).
        session.info[_PENDING_KEY].clear()


def _inside(savepoint: SessionTransaction | None, ended: SessionTransaction) -> bool:
    while savepoint is not None:
        if savepoint is ended:
            return True
        savepoint = savepoint.parent
    return False


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
