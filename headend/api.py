"""REST API of the head-end: meters, their readings, and quarantined messages.

No `from __future__ import annotations` here: FastAPI resolves the route signatures,
which refer to the local `DB` dependency alias.
"""

from collections.abc import Callable, Iterator
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, status
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_serializer
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from headend.ingest import IngestStats
from headend.models import Meter, Reading, RejectedMessage
from headend.registry import MeterRegistration, RegistryError, register_meter
from protocols.quantities import Quantity


class MeterOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    serial: str
    comm_id: str
    meter_number: str | None
    model: str
    phases: int
    protocol: str
    prepaid_mode: str
    lifecycle: str
    online: bool | None
    last_seen_at: datetime | None


class ReadingOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    quantity: str
    ts: datetime
    value: Decimal
    source: str
    received_at: datetime

    @field_serializer("value")
    def _at_quantity_resolution(self, value: Decimal) -> str:
        """Show the value at its quantity's resolution when that loses nothing."""
        try:
            places = Quantity(self.quantity).info.decimals
        except ValueError:
            return str(value)
        shown = value.quantize(Decimal(1).scaleb(-places))
        return str(shown if shown == value else value.normalize())


class RejectedMessageOut(BaseModel):
    id: int
    source: str
    topic: str
    payload: str = Field(description="The payload as received (UTF-8, undecodable bytes escaped).")
    reason: str
    received_at: datetime


def _error(status_code: int, code: str, message: str) -> HTTPException:
    return HTTPException(status_code, detail={"code": code, "message": message})


# Role names as the composition root's auth knows them.
READERS = ("admin", "supervisor", "clerk", "technician")
ENGINEERS = ("admin", "supervisor", "technician")


def make_router(
    session_factory: sessionmaker[Session],
    stats: Callable[[], IngestStats | None],
    *,
    require: Callable[..., Any],
) -> APIRouter:
    """The head-end routes; ``require(*roles)`` is the caller-check dependency to use."""
    router = APIRouter(prefix="/api", tags=["head-end"])

    def db() -> Iterator[Session]:
        with session_factory() as session:
            yield session

    DB = Annotated[Session, Depends(db)]

    def get_meter(session: Session, meter_id: int) -> Meter:
        meter = session.get(Meter, meter_id)
        if meter is None:
            raise _error(status.HTTP_404_NOT_FOUND, "meter_not_found", f"no meter {meter_id}")
        return meter

    @router.get("/meters", response_model=list[MeterOut])
    def list_meters(
        session: DB,
        _: Any = require(*READERS),
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> Any:
        return session.scalars(select(Meter).order_by(Meter.id).limit(limit).offset(offset)).all()

    @router.post("/meters", response_model=MeterOut, status_code=status.HTTP_201_CREATED)
    def create_meter(session: DB, body: MeterRegistration, _: Any = require(*ENGINEERS)) -> Any:
        try:
            with session.begin():
                return register_meter(session, body)
        except RegistryError as exc:
            raise _error(status.HTTP_409_CONFLICT, exc.code, str(exc)) from None
        except IntegrityError:
            raise _error(
                status.HTTP_409_CONFLICT, "meter_exists", "a meter with these ids exists"
            ) from None

    @router.get("/meters/{meter_id}", response_model=MeterOut)
    def read_meter(session: DB, meter_id: int, _: Any = require(*READERS)) -> Any:
        return get_meter(session, meter_id)

    @router.get("/meters/{meter_id}/readings", response_model=list[ReadingOut])
    def list_readings(
        session: DB,
        meter_id: int,
        _: Any = require(*READERS),
        quantity: Quantity | None = None,
        since: AwareDatetime | None = None,
        until: AwareDatetime | None = None,
        limit: Annotated[int, Query(ge=1, le=10000)] = 500,
    ) -> Any:
        get_meter(session, meter_id)
        query = select(Reading).where(Reading.meter_id == meter_id)
        if quantity is not None:
            query = query.where(Reading.quantity == quantity.value)
        if since is not None:
            query = query.where(Reading.ts >= since)
        if until is not None:
            query = query.where(Reading.ts < until)
        query = query.order_by(Reading.ts.desc(), Reading.quantity).limit(limit)
        return session.scalars(query).all()

    @router.get("/headend/rejected-messages", response_model=list[RejectedMessageOut])
    def list_rejected(
        session: DB,
        _: Any = require(*ENGINEERS),
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> Any:
        rows = session.scalars(
            select(RejectedMessage).order_by(RejectedMessage.id.desc()).limit(limit)
        )
        return [
            RejectedMessageOut(
                id=r.id,
                source=r.source,
                topic=r.topic,
                payload=r.payload.decode("utf-8", errors="backslashreplace"),
                reason=r.reason,
                received_at=r.received_at,
            )
            for r in rows
        ]

    @router.get("/headend/stats")
    def ingest_stats(_: Any = require(*ENGINEERS)) -> dict[str, Any]:
        current = stats()
        return {"ingest": current.as_dict() if current else None}

    return router
