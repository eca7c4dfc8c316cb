"""Leases across worker processes: a channel or a meter is talked to by one worker at a time.

A lease is a row (resource, owner, expires_at). Claiming is one ``INSERT ... ON CONFLICT
DO UPDATE ... WHERE <expired or already mine> RETURNING``: PostgreSQL row-locks the
conflicting row, SQLite has a single writer, so two workers can never both see their
claim succeed. A worker that dies simply stops renewing; its leases expire.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, case, delete, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from headend.connectors.modbus_models import ModbusLease

__all__ = [
    "channel_resource",
    "claim_leases",
    "lease_holders",
    "meter_resource",
    "release_leases",
]


def channel_resource(channel: str) -> str:
    return f"channel:{channel}"


def meter_resource(meter_id: int) -> str:
    return f"meter:{meter_id}"


_LEASES: Table = ModbusLease.__table__  # type: ignore[assignment]


def _upsert(session: Session) -> Any:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        insert: Any = postgresql.insert(_LEASES)
    elif dialect == "sqlite":
        insert = sqlite.insert(_LEASES)
    else:
        raise RuntimeError(f"unsupported database dialect {dialect!r}")
    leases = _LEASES.c
    # A row is taken over only when it has expired (``acquired_at`` of the new row is
    # the claim time) or is already the claimer's; a renewal keeps its acquisition time.
    return insert.on_conflict_do_update(
        index_elements=[leases.resource],
        set_={
            "owner": insert.excluded.owner,
            "expires_at": insert.excluded.expires_at,
            "acquired_at": case(
                (leases.owner == insert.excluded.owner, leases.acquired_at),
                else_=insert.excluded.acquired_at,
            ),
        },
        where=or_(
            leases.expires_at <= insert.excluded.acquired_at,
            leases.owner == insert.excluded.owner,
        ),
    ).returning(leases.resource)


def claim_leases(
    session: Session, resources: Iterable[str], owner: str, now: datetime, ttl: timedelta
) -> set[str]:
    """Claim or renew ``resources`` for ``owner`` until ``now + ttl``; return those won.

    A resource is won if it is free, expired, or already ``owner``'s. Runs in the
    caller's transaction; commit it to make the claim visible.

    Raises:
        ValueError: ``ttl`` is not positive.
    """
    wanted = sorted(set(resources))
    if not wanted:
        return set()
    if ttl <= timedelta(0):
        raise ValueError("a lease needs a positive ttl")
    expires = now + ttl
    rows = [
        {"resource": r, "owner": owner, "acquired_at": now, "expires_at": expires} for r in wanted
    ]
    # executemany of one cached statement (SQLAlchemy batches it into multi-row VALUES).
    return set(session.execute(_upsert(session), rows).scalars())


def release_leases(session: Session, resources: Iterable[str], owner: str) -> None:
    """Give up ``owner``'s leases on ``resources`` (others' leases are left alone)."""
    wanted = list(set(resources))
    if wanted:
        session.execute(
            delete(ModbusLease).where(ModbusLease.resource.in_(wanted), ModbusLease.owner == owner)
        )


def lease_holders(session: Session, resources: Iterable[str], now: datetime) -> dict[str, str]:
    """The current (unexpired) owner of each leased resource among ``resources``."""
    rows = session.execute(
        select(ModbusLease.resource, ModbusLease.owner).where(
            ModbusLease.resource.in_(list(set(resources))), ModbusLease.expires_at > now
        )
    )
    return {resource: owner for resource, owner in rows}
