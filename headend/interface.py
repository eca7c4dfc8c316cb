"""The head-end's narrow public interface for the money side (vending, balance engine).

Other packages call these functions with their own session (same database); they never
query head-end tables themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from headend.models import Meter, MeterEventRecord
from headend.registry import normalise_meter_number
from protocols.mqtt import EventKind

__all__ = [
    "MeterSummary",
    "find_meter",
    "normalise_meter_number",
    "summarise_meter",
    "token_accepted",
]


@dataclass(frozen=True, slots=True)
class MeterSummary:
    """What vending needs to know about a meter."""

    id: int
    serial: str
    meter_number: str | None
    prepaid_mode: str
    lifecycle: str
    supply_group_code: str | None
    tariff_index: str | None
    key_revision: int | None


def find_meter(
    session: Session, *, meter_number: str | None = None, meter_id: int | None = None
) -> MeterSummary | None:
    """The meter with this STS meter number (DRN or PAN, as typed) or id, or None.

    Raises ValueError for a meter number that cannot be one (wrong length, bad check
    digit, unknown IIN).
    """
    if meter_number is not None:
        meter = session.scalar(
            select(Meter).where(Meter.meter_number == normalise_meter_number(meter_number))
        )
    elif meter_id is not None:
        # By primary key: a meter the session already holds costs no query (a select
        # would return that same object anyway).
        meter = session.get(Meter, meter_id)
    else:
        raise ValueError("give a meter_number or a meter_id")
    if meter is None:
        return None
    return summarise_meter(meter)


def summarise_meter(meter: Meter) -> MeterSummary:
    """The summary of a meter row loaded by the caller (e.g. joined with its account)."""
    return MeterSummary(
        id=meter.id,
        serial=meter.serial,
        meter_number=meter.meter_number,
        prepaid_mode=meter.prepaid_mode,
        lifecycle=meter.lifecycle,
        supply_group_code=meter.supply_group_code,
        tariff_index=meter.tariff_index,
        key_revision=meter.key_revision,
    )


def token_accepted(session: Session, meter_id: int, tid: int) -> bool:
    """Whether the meter reported accepting the token with this TID (its
    ``token_accepted`` event, as meters publish it with the token's ``tid``)."""
    details = session.scalars(
        select(MeterEventRecord.detail).where(
            MeterEventRecord.meter_id == meter_id,
            MeterEventRecord.kind == EventKind.TOKEN_ACCEPTED.value,
        )
    )
    return any(detail.get("tid") == tid for detail in details)
