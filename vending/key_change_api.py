"""REST routes of the key change workflow under /api/vending (see vending.key_changes).

Who may do what (roles as gridvend.auth knows them):

- request or cancel a key change: supervisors and admins;
- see key changes, print one's tokens for a site visit, report them entered: technicians,
  supervisors and admins;
- clerks (and channels) see a pending key change in the pre-vend lookup and get its
  tokens only through the vend that hands them out.

Errors answer ``{"detail": {"code", "message"}}`` like the rest of the counter API.

No `from __future__ import annotations` here: FastAPI resolves the route signatures.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, status
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from headend.audit import AuditSink
from headend.interface import find_meter
from vending.api import PREFIX, SUPERVISORS, body, http_refusal
from vending.errors import VendingError
from vending.key_change_views import key_change_json, render_key_change_text
from vending.key_changes import (
    KeyTarget,
    cancel_key_change,
    complete_key_change,
    get_key_change,
    request_key_change,
)
from vending.models_keychange import KeyChangeRecord
from vending.security_module import SecurityModule

KEY_CHANGE_STAFF = ("admin", "supervisor", "technician")


class KeyChangeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    supply_group_code: Annotated[str | None, Field(pattern=r"^[0-9]{6}$")] = None
    tariff_index: Annotated[str | None, Field(pattern=r"^[0-9]{2}$")] = None
    key_revision: Annotated[int | None, Field(ge=1, le=9)] = None
    base_date: Literal[1993, 2014, 2035] | None = None
    reason: Annotated[str, Field(max_length=500)] = ""


class CancelBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, Field(min_length=3, max_length=500)]


def make_key_change_router(
    session_factory: sessionmaker[Session],
    *,
    require: Callable[..., Any],
    security_module: SecurityModule,
    audit: AuditSink,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> APIRouter:
    """The key change routes; ``require(*roles)`` as for ``vending.api.make_router``."""
    router = APIRouter(prefix=PREFIX, tags=["vending"])

    @contextmanager
    def transaction(*, write: bool) -> Iterator[Session]:
        try:
            with session_factory() as session:
                if not write:
                    yield session
                    return
                with session.begin():
                    yield session
        except VendingError as exc:
            raise http_refusal(exc) from None
        except IntegrityError:
            # Two requests raced for the meter's one pending key change.
            raise http_refusal(
                VendingError("key_change_pending", "a key change for this meter was just made")
            ) from None

    def meter_number_of(session: Session, record: KeyChangeRecord) -> str | None:
        meter = find_meter(session, meter_id=record.meter_id)
        return meter.meter_number if meter is not None else None

    @router.post("/meters/{meter_number}/key-changes", status_code=status.HTTP_201_CREATED)
    def request_change(
        meter_number: str,
        principal: Any = require(*SUPERVISORS),
        change: KeyChangeBody = body(KeyChangeBody),
    ) -> dict[str, Any]:
        """Issue the key change tokens moving the meter to a new SGC, TI or KRN (a new
        KRN with a later base date: the TID rollover) and keep them pending; the answer
        carries the tokens."""
        with transaction(write=True) as session:
            record = request_key_change(
                session,
                meter_number,
                KeyTarget(
                    supply_group_code=change.supply_group_code,
                    tariff_index=change.tariff_index,
                    key_revision=change.key_revision,
                    base_date=change.base_date,
                ),
                security_module=security_module,
                audit=audit,
                actor=principal.username,
                reason=change.reason,
                now=clock(),
            )
            return key_change_json(record, meter_number_of(session, record), with_tokens=True)

    @router.get("/key-changes")
    def list_changes(
        _: Any = require(*KEY_CHANGE_STAFF),
        meter: Annotated[str | None, Query(min_length=1, max_length=32)] = None,
        status_: Annotated[
            Literal["pending", "completed", "cancelled"] | None, Query(alias="status")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
    ) -> list[dict[str, Any]]:
        """Key changes, newest first (no tokens: print one to get them)."""
        with transaction(write=False) as session:
            query = select(KeyChangeRecord)
            if meter is not None:
                try:
                    found = find_meter(session, meter_number=meter)
                except ValueError as exc:
                    raise VendingError("invalid_meter_number", str(exc)) from None
                if found is None:
                    return []
                query = query.where(KeyChangeRecord.meter_id == found.id)
            if status_ is not None:
                query = query.where(KeyChangeRecord.status == status_)
            rows = session.scalars(query.order_by(KeyChangeRecord.id.desc()).limit(limit))
            return [
                key_change_json(r, meter_number_of(session, r), with_tokens=False) for r in rows
            ]

    @router.get("/key-changes/{key_change_id}")
    def show_change(key_change_id: int, _: Any = require(*KEY_CHANGE_STAFF)) -> dict[str, Any]:
        with transaction(write=False) as session:
            record = get_key_change(session, key_change_id)
            return key_change_json(record, meter_number_of(session, record), with_tokens=False)

    @router.post("/key-changes/{key_change_id}/print")
    def print_change(
        key_change_id: int,
        principal: Any = require(*KEY_CHANGE_STAFF),
        format: Literal["json", "text"] = "json",
    ) -> Any:
        """The key change with its tokens, for a technician's visit; audited."""
        with transaction(write=True) as session:
            record = get_key_change(session, key_change_id)
            number = meter_number_of(session, record)
            audit.record(
                session,
                actor=principal.username,
                action="key_change.print",
                subject=f"meter:{number or record.meter_id}",
                detail={"key_change_id": record.id, "status": record.status},
            )
            if format == "text":
                return PlainTextResponse(render_key_change_text(record, number))
            return key_change_json(record, number, with_tokens=True)

    @router.post("/key-changes/{key_change_id}/complete")
    def complete_change(
        key_change_id: int, principal: Any = require(*KEY_CHANGE_STAFF)
    ) -> dict[str, Any]:
        """Report the tokens entered in the meter (on site): the meter's key fields move
        to the new key and vends are no longer refused."""
        with transaction(write=True) as session:
            record = complete_key_change(
                session, key_change_id, actor=principal.username, audit=audit, now=clock()
            )
            return key_change_json(record, meter_number_of(session, record), with_tokens=False)

    @router.post("/key-changes/{key_change_id}/cancel")
    def cancel_change(
        key_change_id: int,
        principal: Any = require(*SUPERVISORS),
        cancel: CancelBody = body(CancelBody),
    ) -> dict[str, Any]:
        """Cancel a pending key change with a reason; the meter keeps its key."""
        with transaction(write=True) as session:
            record = cancel_key_change(
                session,
                key_change_id,
                actor=principal.username,
                reason=cancel.reason,
                audit=audit,
                now=clock(),
            )
            return key_change_json(record, meter_number_of(session, record), with_tokens=False)

    return router
