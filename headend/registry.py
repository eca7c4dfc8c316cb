"""The meter registry: adding meters (commissioning and bulk import build on this)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from headend.models import Meter, MeterLifecycle, MeterProtocol, PrepaidMode
from protocols.mqtt.topics import METER_ID_PATTERN


class RegistryError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class MeterRegistration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    serial: Annotated[str, Field(pattern=METER_ID_PATTERN.pattern)]
    comm_id: Annotated[str | None, Field(pattern=METER_ID_PATTERN.pattern)] = None
    meter_number: Annotated[str | None, Field(pattern=r"^\d{11}$|^\d{13}$|^\d{18}$")] = None
    model: Annotated[str, Field(max_length=64)] = ""
    phases: Annotated[int, Field(ge=1, le=3)] = 1
    protocol: MeterProtocol = MeterProtocol.MQTT
    prepaid_mode: PrepaidMode = PrepaidMode.TOKEN
    lifecycle: MeterLifecycle = MeterLifecycle.IN_STOCK


def register_meter(session: Session, registration: MeterRegistration) -> Meter:
    """Add a meter; raise RegistryError("meter_exists") if its serial or ids are taken."""
    comm_id = registration.comm_id or registration.serial
    identities = [Meter.serial == registration.serial, Meter.comm_id == comm_id]
    if registration.meter_number:
        identities.append(Meter.meter_number == registration.meter_number)
    clash = session.scalar(select(Meter.serial).where(or_(*identities)))
    if clash is not None:
        raise RegistryError("meter_exists", f"meter {clash} already has one of these identifiers")
    meter = Meter(
        serial=registration.serial,
        comm_id=comm_id,
        meter_number=registration.meter_number,
        model=registration.model,
        phases=registration.phases,
        protocol=registration.protocol.value,
        prepaid_mode=registration.prepaid_mode.value,
        lifecycle=registration.lifecycle.value,
        created_at=datetime.now(UTC),
    )
    session.add(meter)
    session.flush()
    return meter
