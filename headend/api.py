"""REST API of the head-end: meters, their readings, and quarantined messages.

No `from __future__ import annotations` here: FastAPI resolves the route signatures,
which refer to the local `DB` dependency alias.
"""

from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, HTTPException, Query, UploadFile, status
from fastapi.responses import PlainTextResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_serializer, field_validator
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from headend.audit import AuditSink
from headend.bulk_import import ImportFileError, example_csv, import_meters
from headend.commissioning import (
    Commissioning,
    CommissioningError,
    KeyLoader,
    LinkFactory,
    open_meter_link,
)
from headend.health import HealthError, read_success_rates, silent_meters
from headend.ingest import IngestStats
from headend.interface import MAX_CONSUMPTION_BATCH, latest_consumption
from headend.models import (
    Meter,
    MeterLifecycle,
    MeterProtocol,
    Reading,
    ReadingEstimate,
    RejectedMessage,
)
from headend.registry import (
    MeterRegistration,
    MeterUpdate,
    RegistryError,
    lifecycle_history,
    register_meter,
    transition_meter,
    update_meter,
)
from protocols.quantities import Kind, Quantity


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
    lifecycle_changed_at: datetime | None
    supply_group_code: str | None
    tariff_index: str | None
    key_revision: int | None
    key_type: int | None
    base_date: int | None
    key_expiry_number: int | None
    encryption_algorithm: str | None
    dkga: str | None
    rated_max_current_a: int | None
    location: str
    latitude: Decimal | None
    longitude: Decimal | None
    modbus_profile: str | None
    modbus_host: str | None
    modbus_port: int | None
    rtu_port: str | None
    rtu_baud: int | None
    rtu_parity: str | None
    modbus_unit: int | None


class LifecycleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: MeterLifecycle
    reason: Annotated[str, Field(max_length=500)] = ""


class LifecycleChangeOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    from_state: str | None
    to_state: str
    changed_by: str
    changed_at: datetime
    reason: str


class CommissioningRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_all: bool = Field(
        default=True, description="Run every step now; false starts a guided run only."
    )


class ReadingOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    quantity: str
    ts: datetime
    value: Decimal
    source: str
    received_at: datetime
    quality: str = Field(
        default="measured",
        description="measured, flagged (held for an operator) or estimated (interpolated "
        "at a missing interval boundary; source 'estimate')",
    )
    flags: list[str] = Field(default_factory=list, description="Validation flags raised.")
    reason: str = Field(default="", description="Validation's findings, for a person.")

    @field_validator("flags", mode="before")
    @classmethod
    def _split_flags(cls, value: Any) -> Any:
        # Stored comma-separated in one column.
        if isinstance(value, str):
            return [f for f in value.split(",") if f]
        return value

    @field_serializer("value")
    def _at_quantity_resolution(self, value: Decimal) -> str:
        """Show the value at its quantity's resolution when that loses nothing."""
        return _at_resolution(value, self.quantity)


class ConsumptionOut(BaseModel):
    offset: int = Field(description="The record's offset in the consumption stream.")
    t_start: datetime
    t_end: datetime
    energy_kwh: str = Field(description="Exact, at the register's resolution.")
    quality: str = Field(description="measured, estimated or flagged (held for an operator)")
    reason: str
    supersedes: int | None = Field(description="Offset of the record this one corrects.")


def _at_resolution(value: Decimal, quantity: str) -> str:
    try:
        places = Quantity(quantity).info.decimals
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
SUPERVISORS = ("admin", "supervisor")
# Lifecycle moves a technician makes in the field; the others (activate, suspend,
# decommission, return to stock) are a supervisor's decision.
TECHNICIAN_TARGETS = frozenset({MeterLifecycle.INSTALLED, MeterLifecycle.IN_STOCK})
MAX_IMPORT_BYTES = 10 * 1024 * 1024

_REGISTRY_STATUS = {
    "meter_not_found": status.HTTP_404_NOT_FOUND,
    "meter_exists": status.HTTP_409_CONFLICT,
    "transition_not_allowed": status.HTTP_409_CONFLICT,
    "commissioning_required": status.HTTP_409_CONFLICT,
    "invalid_state": status.HTTP_409_CONFLICT,
    "reason_required": status.HTTP_422_UNPROCESSABLE_CONTENT,
}
_COMMISSIONING_STATUS = {
    "meter_not_found": status.HTTP_404_NOT_FOUND,
    "run_not_found": status.HTTP_404_NOT_FOUND,
    "meter_not_installed": status.HTTP_409_CONFLICT,
    "commissioning_in_progress": status.HTTP_409_CONFLICT,
    "run_finished": status.HTTP_409_CONFLICT,
    "step_conflict": status.HTTP_409_CONFLICT,
}


def _registry_error(exc: RegistryError) -> HTTPException:
    return _error(_REGISTRY_STATUS.get(exc.code, status.HTTP_409_CONFLICT), exc.code, str(exc))


def _commissioning_error(exc: CommissioningError) -> HTTPException:
    code = _COMMISSIONING_STATUS.get(exc.code, status.HTTP_409_CONFLICT)
    return _error(code, exc.code, str(exc))


def _actor(principal: Any) -> str:
    return str(getattr(principal, "username", "api"))


def make_router(
    session_factory: sessionmaker[Session],
    stats: Callable[[], IngestStats | None],
    *,
    require: Callable[..., Any],
    audit: AuditSink | None = None,
    link_factory: LinkFactory = open_meter_link,
    key_loader: KeyLoader | None = None,
) -> APIRouter:
    """The head-end routes; ``require(*roles)`` is the caller-check dependency to use.

    ``audit`` receives registry changes and commissioning results; ``link_factory`` opens
    the link to a meter for commissioning (default: Modbus from the registry's address;
    ``headend.meter_link_mqtt.commissioning_link_factory(queue)`` adds MQTT meters);
    ``key_loader`` issues key change tokens for commissioning's load-keys step.
    """
    router = APIRouter(prefix="/api", tags=["head-end"])
    commissioning = Commissioning(
        session_factory, audit=audit, link_factory=link_factory, key_loader=key_loader
    )

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
        lifecycle: MeterLifecycle | None = None,
        protocol: MeterProtocol | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> Any:
        query = select(Meter)
        if lifecycle is not None:
            query = query.where(Meter.lifecycle == lifecycle.value)
        if protocol is not None:
            query = query.where(Meter.protocol == protocol.value)
        return session.scalars(query.order_by(Meter.id).limit(limit).offset(offset)).all()

    @router.post("/meters", response_model=MeterOut, status_code=status.HTTP_201_CREATED)
    def create_meter(
        session: DB, body: MeterRegistration, principal: Any = require(*ENGINEERS)
    ) -> Any:
        try:
            with session.begin():
                return register_meter(session, body, actor=_actor(principal), audit=audit)
        except RegistryError as exc:
            raise _registry_error(exc) from None
        except IntegrityError:
            raise _error(
                status.HTTP_409_CONFLICT, "meter_exists", "a meter with these ids exists"
            ) from None

    @router.post("/meters/import")
    async def import_csv(
        file: Annotated[UploadFile, File(description="CSV, header row first (docs/registry.md)")],
        principal: Any = require(*ENGINEERS),
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Register meters from a CSV file: valid rows are imported, the others reported by
        row number with their reasons."""
        data = await file.read(MAX_IMPORT_BYTES + 1)
        if len(data) > MAX_IMPORT_BYTES:
            raise _error(
                status.HTTP_413_CONTENT_TOO_LARGE,
                "file_too_large",
                f"CSV files are limited to {MAX_IMPORT_BYTES // (1024 * 1024)} MiB; split it",
            )
        try:
            report = import_meters(
                session_factory,
                data,
                actor=_actor(principal),
                audit=audit,
                source=file.filename or "upload.csv",
                dry_run=dry_run,
            )
        except ImportFileError as exc:
            raise _error(status.HTTP_422_UNPROCESSABLE_CONTENT, "invalid_file", str(exc)) from None
        return report.as_dict()

    @router.get("/meters/import/template", response_class=PlainTextResponse)
    def import_template(_: Any = require(*ENGINEERS)) -> str:
        """A small valid CSV file to start a bulk import from."""
        return example_csv()

    @router.get("/meters/{meter_id}", response_model=MeterOut)
    def read_meter(session: DB, meter_id: int, _: Any = require(*READERS)) -> Any:
        return get_meter(session, meter_id)

    @router.patch("/meters/{meter_id}", response_model=MeterOut)
    def change_meter(
        session: DB, meter_id: int, body: MeterUpdate, principal: Any = require(*ENGINEERS)
    ) -> Any:
        try:
            with session.begin():
                return update_meter(session, meter_id, body, actor=_actor(principal), audit=audit)
        except RegistryError as exc:
            raise _registry_error(exc) from None
        except IntegrityError:
            raise _error(
                status.HTTP_409_CONFLICT, "meter_exists", "a meter with these ids exists"
            ) from None

    @router.post("/meters/{meter_id}/lifecycle", response_model=LifecycleChangeOut)
    def change_lifecycle(
        session: DB, meter_id: int, body: LifecycleRequest, principal: Any = require(*ENGINEERS)
    ) -> Any:
        """Move a meter along its lifecycle (see docs/registry.md for the allowed moves)."""
        role = str(getattr(getattr(principal, "role", None), "value", ""))
        if role == "technician" and body.to not in TECHNICIAN_TARGETS:
            raise _error(
                status.HTTP_403_FORBIDDEN,
                "forbidden_role",
                f"moving a meter to {body.to.value} needs a supervisor or admin",
            )
        try:
            with session.begin():
                return transition_meter(
                    session,
                    meter_id,
                    body.to,
                    actor=_actor(principal),
                    reason=body.reason,
                    audit=audit,
                )
        except RegistryError as exc:
            raise _registry_error(exc) from None

    @router.get("/meters/{meter_id}/lifecycle", response_model=list[LifecycleChangeOut])
    def read_lifecycle(session: DB, meter_id: int, _: Any = require(*READERS)) -> Any:
        try:
            return lifecycle_history(session, meter_id)
        except RegistryError as exc:
            raise _registry_error(exc) from None

    @router.post("/meters/{meter_id}/commissioning", status_code=status.HTTP_201_CREATED)
    async def start_commissioning(
        meter_id: int,
        principal: Any = require(*ENGINEERS),
        body: CommissioningRequest | None = None,
    ) -> dict[str, Any]:
        """Start commissioning an installed meter: with ``run_all`` (the default) every
        step runs now; otherwise the run waits for ``POST /api/commissioning/{id}/next``."""
        run_all = body.run_all if body is not None else True
        try:
            if run_all:
                view = await commissioning.commission(meter_id, technician=_actor(principal))
            else:
                view = commissioning.get_run(
                    commissioning.start(meter_id, technician=_actor(principal))
                )
        except CommissioningError as exc:
            raise _commissioning_error(exc) from None
        return view.as_dict()

    @router.get("/meters/{meter_id}/commissioning")
    def list_commissioning(meter_id: int, _: Any = require(*READERS)) -> list[dict[str, Any]]:
        return [view.as_dict() for view in commissioning.runs_of(meter_id)]

    @router.get("/commissioning/{run_id}")
    def read_commissioning(run_id: int, _: Any = require(*READERS)) -> dict[str, Any]:
        try:
            return commissioning.get_run(run_id).as_dict()
        except CommissioningError as exc:
            raise _commissioning_error(exc) from None

    @router.post("/commissioning/{run_id}/next")
    async def next_commissioning_step(run_id: int, _: Any = require(*ENGINEERS)) -> dict[str, Any]:
        """Run and store the next step of a guided run."""
        try:
            return (await commissioning.run_next_step(run_id)).as_dict()
        except CommissioningError as exc:
            raise _commissioning_error(exc) from None

    @router.get("/headend/health/silent")
    def list_silent(
        session: DB,
        _: Any = require(*ENGINEERS),
        interval_s: Annotated[int, Query(ge=1, le=86400)] = 900,
        intervals: Annotated[int, Query(ge=1, le=10000)] = 4,
        limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    ) -> list[dict[str, Any]]:
        """Meters expected to talk that were not heard from for ``intervals`` intervals."""
        silent = silent_meters(
            session,
            now=datetime.now(UTC),
            interval=timedelta(seconds=interval_s),
            intervals=intervals,
            limit=limit,
        )
        return [
            {
                "meter_id": m.meter_id,
                "serial": m.serial,
                "lifecycle": m.lifecycle,
                "protocol": m.protocol,
                "online": m.online,
                "last_seen_at": m.last_seen_at.isoformat() if m.last_seen_at else None,
                "intervals_missed": m.intervals_missed,
            }
            for m in silent
        ]

    @router.get("/headend/health/read-rates")
    def list_read_rates(
        session: DB,
        since: date,
        until: date,
        _: Any = require(*ENGINEERS),
        interval_s: Annotated[int, Query(ge=1, le=86400)] = 900,
        meter_id: int | None = None,
    ) -> list[dict[str, Any]]:
        """Read success per meter and UTC day (rates as decimal strings, 0.9375 = 93.75 %)."""
        try:
            rates = read_success_rates(
                session,
                since=since,
                until=until,
                now=datetime.now(UTC),
                interval=timedelta(seconds=interval_s),
                meter_id=meter_id,
            )
        except HealthError as exc:
            raise _error(status.HTTP_422_UNPROCESSABLE_CONTENT, "invalid_range", str(exc)) from None
        return [
            {
                "meter_id": r.meter_id,
                "serial": r.serial,
                "day": r.day.isoformat(),
                "attempts": r.attempts,
                "successes": r.successes,
                "rate": str(r.rate) if r.rate is not None else None,
                "source": r.source,
                "last_failure": r.last_failure,
            }
            for r in rates
        ]

    @router.get("/meters/{meter_id}/readings", response_model=list[ReadingOut])
    def list_readings(
        session: DB,
        meter_id: int,
        _: Any = require(*READERS),
        quantity: Quantity | None = None,
        since: AwareDatetime | None = None,
        until: AwareDatetime | None = None,
        limit: Annotated[int, Query(ge=1, le=10000)] = 500,
        include_estimates: bool = False,
    ) -> Any:
        """Stored reads, newest first, with validation's quality, flags and reason; with
        ``include_estimates`` the estimated boundary reads too (quality "estimated")."""
        get_meter(session, meter_id)
        query = select(Reading).where(Reading.meter_id == meter_id)
        if quantity is not None:
            query = query.where(Reading.quantity == quantity.value)
        if since is not None:
            query = query.where(Reading.ts >= since)
        if until is not None:
            query = query.where(Reading.ts < until)
        query = query.order_by(Reading.ts.desc(), Reading.quantity).limit(limit)
        out: list[Any] = list(session.scalars(query))
        if not include_estimates:
            return out
        estimates = select(ReadingEstimate).where(ReadingEstimate.meter_id == meter_id)
        if quantity is not None:
            estimates = estimates.where(ReadingEstimate.quantity == quantity.value)
        if since is not None:
            estimates = estimates.where(ReadingEstimate.ts >= since)
        if until is not None:
            estimates = estimates.where(ReadingEstimate.ts < until)
        estimates = estimates.order_by(ReadingEstimate.ts.desc()).limit(limit)
        out += [
            ReadingOut(
                quantity=e.quantity,
                ts=e.ts,
                value=e.value,
                source="estimate",
                received_at=e.created_at,
                quality="estimated",
            )
            for e in session.scalars(estimates)
        ]
        out.sort(key=lambda r: (-r.ts.timestamp(), r.quantity))
        return out[:limit]

    @router.get("/meters/{meter_id}/consumption", response_model=list[ConsumptionOut])
    def list_consumption(
        session: DB,
        meter_id: int,
        _: Any = require(*READERS),
        quantity: Quantity = Quantity.ENERGY_IMPORT_KWH,
        since: AwareDatetime | None = None,
        until: AwareDatetime | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_CONSUMPTION_BATCH)] = 1000,
    ) -> Any:
        """Interval consumption of one cumulative register: the latest record of each
        interval starting in ``[since, until)``, oldest first."""
        get_meter(session, meter_id)
        if quantity.info.kind is not Kind.CUMULATIVE:
            raise _error(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                "not_cumulative",
                f"{quantity.value} is not a cumulative register: it has no interval consumption",
            )
        events = latest_consumption(
            session, meter_id, quantity, since=since, until=until, limit=limit
        )
        return [
            ConsumptionOut(
                offset=e.offset,
                t_start=e.t_start,
                t_end=e.t_end,
                energy_kwh=str(e.energy_kwh),
                quality=e.quality,
                reason=e.reason,
                supersedes=e.supersedes,
            )
            for e in events
        ]

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
