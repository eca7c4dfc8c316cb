"""Meter events and alarms: which events are alarms, listing them, acknowledging them.

An alarm is an event whose severity is above ``info``. The severity is decided once, when
the event is stored (``event_severity``), from the one table below, so listing "alarms
only" is a plain indexed filter and an alarm stays an alarm if the table changes later.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from headend.audit import AuditSink
from headend.models import Meter, MeterEventRecord
from protocols.mqtt import EventKind


class Severity(StrEnum):
    INFO = "info"  # a record of what happened, not an alarm
    MINOR = "minor"  # worth a look today
    MAJOR = "major"  # a customer may be off supply for a reason nobody asked for
    CRITICAL = "critical"  # possible theft or interference: send someone


# The one table of what each event kind means to an operator.
SEVERITY_BY_KIND: Mapping[EventKind, Severity] = {
    EventKind.POWER_UP: Severity.INFO,
    EventKind.POWER_DOWN: Severity.MINOR,  # supply outage or the meter switched off
    EventKind.COVER_OPEN: Severity.CRITICAL,
    EventKind.MAGNETIC_TAMPER: Severity.CRITICAL,
    EventKind.RELAY_CHANGED: Severity.INFO,  # an unexpected opening is raised below
    # Credit is the customer's business: vending tells them, the relay does its job.
    EventKind.LOW_CREDIT: Severity.INFO,
    EventKind.CREDIT_EXHAUSTED: Severity.INFO,
    EventKind.TOKEN_ACCEPTED: Severity.INFO,
    EventKind.TOKEN_REJECTED: Severity.INFO,
    EventKind.POWER_LIMIT_EXCEEDED: Severity.MINOR,  # the customer tripped their limit
}
# Reasons a meter gives (relay_changed detail "reason") for opening its relay that someone
# asked for or the customer caused; any other opening (tamper, unknown) is an alarm.
EXPECTED_OPENING_REASONS = frozenset({"remote", "credit_exhausted", "power_limit_exceeded"})
UNEXPECTED_OPENING = Severity.MAJOR

ALARM_SEVERITIES = tuple(s for s in Severity if s is not Severity.INFO)
MAX_NOTE_LENGTH = 500


def event_severity(kind: EventKind, detail: Mapping[str, object]) -> Severity:
    """How serious an event is; ``info`` means it is not an alarm."""
    opened = kind is EventKind.RELAY_CHANGED and detail.get("closed") is False
    if opened and detail.get("reason") not in EXPECTED_OPENING_REASONS:
        return UNEXPECTED_OPENING
    return SEVERITY_BY_KIND[kind]


class EventError(ValueError):
    """A request about events that cannot be carried out; ``code`` is machine-readable.

    Codes: ``event_not_found``, ``not_an_alarm``, ``invalid_range``.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events to list; every field narrows the list (None/empty: no condition).
    ``since``/``until`` are the meter's event time, half-open ``[since, until)``."""

    meter_id: int | None = None
    kinds: Sequence[EventKind] = ()
    alarms_only: bool = False
    unacknowledged_only: bool = False
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True, slots=True)
class EventView:
    id: int
    meter_id: int
    serial: str
    seq: int
    ts: datetime
    kind: str
    detail: dict[str, object]
    received_at: datetime
    severity: str
    alarm: bool
    acknowledged_by: str | None
    acknowledged_at: datetime | None
    ack_note: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "meter_id": self.meter_id,
            "serial": self.serial,
            "seq": self.seq,
            "ts": self.ts.isoformat(),
            "kind": self.kind,
            "detail": self.detail,
            "received_at": self.received_at.isoformat(),
            "severity": self.severity,
            "alarm": self.alarm,
            "acknowledged_by": self.acknowledged_by,
            "acknowledged_at": self.acknowledged_at.isoformat() if self.acknowledged_at else None,
            "ack_note": self.ack_note,
        }


def list_events(
    session: Session, where: EventFilter, *, limit: int, before_id: int | None = None
) -> list[EventView]:
    """Events newest stored first (by id), at most ``limit``; page on with ``before_id``
    set to the last id of the previous page. Raises EventError("invalid_range")."""
    if where.since is not None and where.until is not None and where.since >= where.until:
        raise EventError("invalid_range", "since must be before until")
    query = select(MeterEventRecord, Meter.serial).join(
        Meter, Meter.id == MeterEventRecord.meter_id
    )
    if where.meter_id is not None:
        query = query.where(MeterEventRecord.meter_id == where.meter_id)
    if where.kinds:
        query = query.where(MeterEventRecord.kind.in_([k.value for k in where.kinds]))
    if where.alarms_only:
        query = query.where(MeterEventRecord.severity.in_([s.value for s in ALARM_SEVERITIES]))
    if where.unacknowledged_only:
        query = query.where(MeterEventRecord.acknowledged_at.is_(None))
    if where.since is not None:
        query = query.where(MeterEventRecord.ts >= where.since)
    if where.until is not None:
        query = query.where(MeterEventRecord.ts < where.until)
    if before_id is not None:
        query = query.where(MeterEventRecord.id < before_id)
    rows = session.execute(query.order_by(MeterEventRecord.id.desc()).limit(limit))
    return [_view(record, serial) for record, serial in rows]


@dataclass(frozen=True, slots=True)
class Acknowledgement:
    event: EventView
    already_acknowledged: bool  # True: an earlier acknowledgement stands unchanged


def acknowledge_event(
    session: Session,
    event_id: int,
    *,
    actor: str,
    note: str,
    now: datetime,
    audit: AuditSink | None = None,
) -> Acknowledgement:
    """Acknowledge an alarm in the caller's transaction and audit it. Acknowledging it
    again changes nothing and says who did it first. Raises EventError
    (``event_not_found``, ``not_an_alarm``)."""
    row = session.execute(
        select(MeterEventRecord.severity, Meter.serial)
        .join(Meter, Meter.id == MeterEventRecord.meter_id)
        .where(MeterEventRecord.id == event_id)
    ).one_or_none()
    if row is None:
        raise EventError("event_not_found", f"no event {event_id}")
    severity, serial = row
    if severity == Severity.INFO.value:
        raise EventError(
            "not_an_alarm", f"event {event_id} is not an alarm: nothing to acknowledge"
        )
    # Conditional on "not yet acknowledged", so two operators racing cannot both win.
    changed = (
        session.execute(
            update(MeterEventRecord)
            .where(MeterEventRecord.id == event_id, MeterEventRecord.acknowledged_at.is_(None))
            .values(acknowledged_by=actor, acknowledged_at=now, ack_note=note)
            .returning(MeterEventRecord.id)
            .execution_options(synchronize_session=False)
        ).first()
        is not None
    )
    record = session.scalars(
        select(MeterEventRecord)
        .where(MeterEventRecord.id == event_id)
        .execution_options(populate_existing=True)
    ).one()
    if changed and audit is not None:
        audit.record(
            session,
            actor=actor,
            action="meter_event.acknowledge",
            subject=f"meter:{serial}",
            detail={
                "event_id": event_id,
                "kind": record.kind,
                "severity": record.severity,
                "note": note,
            },
        )
    return Acknowledgement(event=_view(record, serial), already_acknowledged=not changed)


def _view(record: MeterEventRecord, serial: str) -> EventView:
    return EventView(
        id=record.id,
        meter_id=record.meter_id,
        serial=serial,
        seq=record.seq,
        ts=record.ts,
        kind=record.kind,
        detail=dict(record.detail),
        received_at=record.received_at,
        severity=record.severity,
        alarm=record.severity != Severity.INFO.value,
        acknowledged_by=record.acknowledged_by,
        acknowledged_at=record.acknowledged_at,
        ack_note=record.ack_note,
    )
