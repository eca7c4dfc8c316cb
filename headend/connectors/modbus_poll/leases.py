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

from sqlalchemy import case, delete, or_, select
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


def _upsert(session: Session) -> Any:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(ModbusLease)
    if dialect == "sqlite":
        return sqlite.insert(ModbusLease)
    raise RuntimeError(f"unsupported database dialect {dialect!r}")


def claim_leases(
    session: Session, resources: Iterable[str], owner: str, now: datetime, ttl: timedelta
) -> set[str]:
    """Claim or renew ``resources`` for ``owner`` until ``now + ttl``; return those won.

    A resource is won if it is free, expired, or already ``owner``'s. Runs in the
    caller's transaction; commit it to make the claim visible.
    """
    wanted = sorted(set(resources))
    if not wanted:
        return set()
    if ttl <= timedelta(0):
        raise ValueError("a lease needs a positive ttl")
    expires = now + ttl
    insert = _upsert(session)
    statement = (
        insert.values(
            [
                {"resource": r, "owner": owner, "acquired_at": now, "expires_at": expires}
                for r in wanted
            ]
        )
        .on_conflict_do_update(
            index_elements=[ModbusLease.resource],
            set_={
                "owner": insert.excluded.owner,
                "expires_at": insert.excluded.expires_at,
                # Keep the original acquisition time on a renewal.
                "acquired_at": _renewal_acquired_at(insert, owner),
            },
            where=or_(ModbusLease.expires_at <= now, ModbusLease.owner == owner),
        )
        .returning(ModbusLease.resource)
    )
    return set(session.execute(statement).scalars())


def _renewal_acquired_at(insert: Any, owner: str) -> Any:
    return case(
        (ModbusLease.owner == owner, ModbusLease.acquired_at), else_=insert.excluded.acquired_at
    )


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
