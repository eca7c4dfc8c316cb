"""REST API of meter events and alarms.

    GET  /api/events                 events newest first, filtered, paged by ``before_id``
    POST /api/events/{event_id}/ack  acknowledge an alarm (who, when, a note)

Admin, supervisor and technician may list and acknowledge (a technician on site is
often the one who deals with a tamper); clerks see neither. Every error answers
``{"detail": {"code": ..., "message": ...}}`` and changes nothing.

No `from __future__ import annotations` here: FastAPI resolves the route signatures.
"""

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, status
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session, sessionmaker

from headend.audit import AuditSink
from headend.events import (
    MAX_NOTE_LENGTH,
    EventError,
    EventFilter,
    acknowledge_event,
    list_events,
)
from headend.models import Meter
from protocols.mqtt import EventKind

OPERATORS = ("admin", "supervisor", "technician")
MAX_PAGE = 1000

_STATUS_FOR_CODE = {
    "event_not_found": status.HTTP_404_NOT_FOUND,
    "meter_not_found": status.HTTP_404_NOT_FOUND,
    "not_an_alarm": status.HTTP_409_CONFLICT,
    "invalid_range": status.HTTP_422_UNPROCESSABLE_CONTENT,
}


class AckRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: Annotated[str, Field(max_length=MAX_NOTE_LENGTH)] = ""


def _error(exc: EventError) -> HTTPException:
    code = _STATUS_FOR_CODE.get(exc.code, status.HTTP_409_CONFLICT)
    return HTTPException(code, detail={"code": exc.code, "message": str(exc)})


def make_router(
    session_factory: sessionmaker[Session],
    *,
    require: Callable[..., Any],
    audit: AuditSink | None = None,
) -> APIRouter:
    """The event routes; ``require(*roles)`` is the caller-check dependency to use and
    ``audit`` receives every acknowledgement."""
    router = APIRouter(prefix="/api", tags=["events"])

    def db() -> Iterator[Session]:
        with session_factory() as session:
            yield session

    DB = Annotated[Session, Depends(db)]

    @router.get("/events")
    def read_events(
        session: DB,
        _: Any = require(*OPERATORS),
        meter_id: int | None = None,
        kind: Annotated[list[EventKind] | None, Query()] = None,
        alarms_only: bool = False,
        unacknowledged: bool = False,
        since: AwareDatetime | None = None,
        until: AwareDatetime | None = None,
        before_id: Annotated[int | None, Query(ge=1)] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    ) -> dict[str, Any]:
        """Events newest stored first. ``since``/``until`` bound the meter's event time
        ``[since, until)``; ``kind`` may repeat. The next page: ``before_id`` set to the
        answer's ``next_before_id`` (null on the last page)."""
        if meter_id is not None and session.get(Meter, meter_id) is None:
            raise _error(EventError("meter_not_found", f"no meter {meter_id}"))
        where = EventFilter(
            meter_id=meter_id,
            kinds=tuple(kind or ()),
            alarms_only=alarms_only,
            unacknowledged_only=unacknowledged,
            since=since,
            until=until,
        )
        try:
            events = list_events(session, where, limit=limit, before_id=before_id)
        except EventError as exc:
            raise _error(exc) from None
        return {
            "events": [e.as_dict() for e in events],
            "next_before_id": events[-1].id if len(events) == limit else None,
        }

    @router.post("/events/{event_id}/ack")
    def acknowledge(
        session: DB,
        event_id: int,
        principal: Any = require(*OPERATORS),
        body: AckRequest | None = None,
    ) -> dict[str, Any]:
        """Acknowledge an alarm. Again: 200 with ``already_acknowledged`` true and the
        first acknowledgement unchanged; an event that is not an alarm: 409."""
        try:
            with session.begin():
                ack = acknowledge_event(
                    session,
                    event_id,
                    actor=str(getattr(principal, "username", "api")),
                    note=body.note if body is not None else "",
                    now=datetime.now(UTC),
                    audit=audit,
                )
        except EventError as exc:
            raise _error(exc) from None
        return {"event": ack.event.as_dict(), "already_acknowledged": ack.already_acknowledged}

    return router
