"""On-demand reads of Modbus meters from the API: the running poller reads the meter now.

    POST /api/meters/{meter_id}/read-now   {"group": "instantaneous"}  (body optional)

The poller reads the group's registers over the meter's Modbus channel, stores them
through the normal ingestion path (validation, de-duplication) and the route answers
with the values read. MQTT meters answer a ``read_now`` command instead (it is
asynchronous: POST /api/meters/{id}/commands). Any role that may read meters may ask;
a read changes nothing in the meter. Errors answer ``{"detail": {"code", "message"}}``.

No `from __future__ import annotations` here: FastAPI resolves the route signatures.
"""

from collections.abc import Callable, Iterator
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session, sessionmaker

from headend.connectors.modbus import ChannelBusyError, PollFailure, UnknownMeterError
from headend.ingest import PolledReading
from headend.models import Meter, MeterLifecycle, MeterProtocol

READERS = ("admin", "supervisor", "clerk", "technician")
MODBUS_PROTOCOLS = frozenset({MeterProtocol.MODBUS_TCP.value, MeterProtocol.MODBUS_RTU.value})


class OnDemandReader(Protocol):
    """What the route needs of the poller (``ModbusPoller`` is one)."""

    @property
    def group_names(self) -> frozenset[str]: ...

    async def read_now(self, meter_id: int, group: str = "instantaneous") -> PolledReading: ...


class ReadNowRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    group: Annotated[
        str,
        Field(min_length=1, max_length=64, description="A poll group: instantaneous or energy."),
    ] = "instantaneous"


def _error(status_code: int, code: str, message: str, **extra: Any) -> HTTPException:
    return HTTPException(status_code, detail={"code": code, "message": message, **extra})


def make_router(
    session_factory: sessionmaker[Session],
    *,
    require: Callable[..., Any],
    reader: OnDemandReader | None,
) -> APIRouter:
    """The read-now route; without a ``reader`` (no poller in this process) it answers
    503 ``poller_unavailable``."""
    router = APIRouter(prefix="/api", tags=["head-end"])

    def db() -> Iterator[Session]:
        with session_factory() as session:
            yield session

    DB = Annotated[Session, Depends(db)]

    @router.post("/meters/{meter_id}/read-now")
    async def read_now(
        session: DB,
        meter_id: int,
        _: Any = require(*READERS),
        body: ReadNowRequest | None = None,
    ) -> dict[str, Any]:
        """Read a Modbus meter now; the values are stored and returned (``ts`` is the
        moment of the read, values as decimal strings)."""
        group = body.group if body is not None else "instantaneous"
        meter = session.get(Meter, meter_id)
        if meter is None:
            raise _error(status.HTTP_404_NOT_FOUND, "meter_not_found", f"no meter {meter_id}")
        serial, protocol, lifecycle = meter.serial, meter.protocol, meter.lifecycle
        session.close()  # no connection held while the meter answers
        if protocol not in MODBUS_PROTOCOLS:
            raise _error(
                status.HTTP_409_CONFLICT,
                "unsupported_transport",
                f"meter {meter_id} speaks {protocol}: request a read_now command "
                f"(POST /api/meters/{meter_id}/commands) instead",
            )
        if lifecycle == MeterLifecycle.DECOMMISSIONED.value:
            raise _error(
                status.HTTP_409_CONFLICT,
                "meter_decommissioned",
                f"meter {meter_id} is decommissioned",
            )
        if reader is None:
            raise _error(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                "poller_unavailable",
                "no Modbus poller runs in this process (start it with `gridvend serve`)",
            )
        if group not in reader.group_names:
            raise _error(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                "unknown_group",
                f"no poll group {group!r}; one of: {', '.join(sorted(reader.group_names))}",
            )
        try:
            reading = await reader.read_now(meter_id, group)
        except UnknownMeterError as exc:
            raise _error(status.HTTP_409_CONFLICT, "meter_not_polled", str(exc)) from None
        except ChannelBusyError as exc:
            raise _error(
                status.HTTP_409_CONFLICT,
                "channel_busy",
                f"another worker is using the meter's channel; try again shortly ({exc})",
            ) from None
        except PollFailure as exc:
            raise _error(
                status.HTTP_502_BAD_GATEWAY,
                "read_failed",
                f"meter {meter_id} did not answer: {exc}",
                reason=exc.reason.value,
            ) from None
        return {
            "meter_id": meter_id,
            "serial": serial,
            "group": group,
            "ts": reading.ts.isoformat(),
            "received_at": reading.received_at.isoformat(),
            "source": reading.source,
            "values": {q.value: str(v) for q, v in sorted(reading.values.items())},
        }

    return router
