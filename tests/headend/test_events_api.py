"""Meter events and alarms through the API: classified when stored, listed with filters
and pages, acknowledged once (audited), with specific errors that change nothing."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from gridvend.app import create_app
from gridvend.audit import AuditEntry
from headend.events import Severity, event_severity
from headend.ingest import InboundMessage, Ingestor
from headend.models import MeterEventRecord, MeterLifecycle
from headend.registry import MeterRegistration, register_meter
from protocols.mqtt import EventKind, MeterChannel, MeterEvent, TopicScheme
from tests.conftest import bearer_headers, make_security_module

SCHEME = TopicScheme()
T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


@pytest.fixture
def client(session_factory: sessionmaker[Session]) -> TestClient:
    app = create_app(session_factory, security_module=make_security_module(session_factory))
    return TestClient(app)


def _meter(session_factory: sessionmaker[Session], serial: str) -> int:
    with session_factory() as session, session.begin():
        registration = MeterRegistration(serial=serial, lifecycle=MeterLifecycle.INSTALLED)
        return register_meter(session, registration, now=T0 - timedelta(days=1)).id


def _report(
    session_factory: sessionmaker[Session],
    serial: str,
    events: list[tuple[EventKind, Mapping[str, str | int | bool]]],
    *,
    first_seq: int = 1,
) -> None:
    """The meter reports ``events``, a minute apart, through the normal ingestion path."""
    messages = [
        InboundMessage(
            topic=SCHEME.meter_topic(serial, MeterChannel.EVENTS),
            payload=MeterEvent(
                seq=first_seq + n, ts=T0 + timedelta(minutes=n), kind=kind, detail=dict(detail)
            ).to_bytes(),
            received_at=T0 + timedelta(minutes=n, seconds=1),
        )
        for n, (kind, detail) in enumerate(events)
    ]
    Ingestor(session_factory, SCHEME).ingest(messages)


def _ids_by_kind(session_factory: sessionmaker[Session]) -> dict[str, int]:
    with session_factory() as session:
        return {r.kind: r.id for r in session.scalars(select(MeterEventRecord))}


def _audit(session_factory: sessionmaker[Session]) -> list[tuple[str, str, dict[str, Any]]]:
    with session_factory() as session:
        return [
            (e.action, e.subject, e.detail)
            for e in session.scalars(select(AuditEntry).order_by(AuditEntry.id))
        ]


TAMPER_DAY = [
    (EventKind.POWER_UP, {}),
    (EventKind.COVER_OPEN, {}),
    (EventKind.RELAY_CHANGED, {"closed": False, "reason": "tamper"}),
    (EventKind.LOW_CREDIT, {"credit_kwh": "1.5"}),
    (EventKind.POWER_LIMIT_EXCEEDED, {"limit_w": 1000, "power_w": 1500}),
]


def test_an_unexpected_relay_opening_is_an_alarm_and_an_ordered_one_is_not() -> None:
    assert event_severity(EventKind.RELAY_CHANGED, {"closed": False, "reason": "tamper"}) == (
        Severity.MAJOR
    )
    assert event_severity(EventKind.RELAY_CHANGED, {"closed": False}) == Severity.MAJOR
    for reason in ("remote", "credit_exhausted", "power_limit_exceeded"):
        opened = {"closed": False, "reason": reason}
        assert event_severity(EventKind.RELAY_CHANGED, opened) == Severity.INFO
    assert event_severity(EventKind.RELAY_CHANGED, {"closed": True}) == Severity.INFO
    assert event_severity(EventKind.MAGNETIC_TAMPER, {}) == Severity.CRITICAL


def test_alarms_are_classified_when_stored_and_listed_alarms_only(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    _meter(session_factory, "EV-1")
    _report(session_factory, "EV-1", TAMPER_DAY)
    headers = bearer_headers(session_factory, "technician")

    everything = client.get("/api/events", headers=headers)
    assert everything.status_code == 200, everything.text
    listed = [(e["kind"], e["severity"], e["alarm"]) for e in everything.json()["events"]]
    assert listed == [  # newest first
        ("power_limit_exceeded", "minor", True),
        ("low_credit", "info", False),
        ("relay_changed", "major", True),
        ("cover_open", "critical", True),
        ("power_up", "info", False),
    ]
    alarms = client.get("/api/events", params={"alarms_only": True}, headers=headers).json()
    assert [e["kind"] for e in alarms["events"]] == [
        "power_limit_exceeded",
        "relay_changed",
        "cover_open",
    ]
    first = alarms["events"][-1]
    assert (first["serial"], first["seq"], first["ts"]) == (
        "EV-1",
        2,
        (T0 + timedelta(minutes=1)).isoformat(),
    )
    assert first["acknowledged_by"] is None and first["acknowledged_at"] is None


def test_events_are_filtered_by_meter_kind_and_time_and_paged_newest_first(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    one = _meter(session_factory, "EV-1")
    _meter(session_factory, "EV-2")
    _report(session_factory, "EV-1", TAMPER_DAY)
    _report(session_factory, "EV-2", [(EventKind.MAGNETIC_TAMPER, {})])
    headers = bearer_headers(session_factory, "supervisor")

    def kinds(**params: Any) -> list[str]:
        response = client.get("/api/events", params=params, headers=headers)
        assert response.status_code == 200, response.text
        return [e["kind"] for e in response.json()["events"]]

    assert kinds(meter_id=one, kind=["cover_open", "magnetic_tamper"]) == ["cover_open"]
    assert kinds(kind=["cover_open", "magnetic_tamper"]) == ["magnetic_tamper", "cover_open"]
    window = {
        "since": (T0 + timedelta(minutes=1)).isoformat(),
        "until": (T0 + timedelta(minutes=3)).isoformat(),
    }
    assert kinds(meter_id=one, **window) == ["relay_changed", "cover_open"]

    pages: list[list[str]] = []
    params: dict[str, Any] = {"meter_id": one, "limit": 2}
    while True:
        page = client.get("/api/events", params=params, headers=headers).json()
        pages.append([e["kind"] for e in page["events"]])
        if page["next_before_id"] is None:
            break
        params["before_id"] = page["next_before_id"]
    assert pages == [
        ["power_limit_exceeded", "low_credit"],
        ["relay_changed", "cover_open"],
        ["power_up"],
    ]


def test_an_alarm_is_acknowledged_once_with_who_when_and_a_note_and_audited(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    _meter(session_factory, "EV-1")
    _report(session_factory, "EV-1", TAMPER_DAY)
    cover = _ids_by_kind(session_factory)["cover_open"]
    technician = bearer_headers(session_factory, "technician")
    supervisor = bearer_headers(session_factory, "supervisor")

    acked = client.post(
        f"/api/events/{cover}/ack", json={"note": "seal replaced on site"}, headers=technician
    )
    assert acked.status_code == 200, acked.text
    body = acked.json()
    assert body["already_acknowledged"] is False
    event = body["event"]
    assert event["acknowledged_by"].startswith("technician-")
    assert event["ack_note"] == "seal replaced on site"
    assert event["acknowledged_at"] is not None

    again = client.post(f"/api/events/{cover}/ack", json={"note": "me too"}, headers=supervisor)
    assert again.status_code == 200, again.text
    assert again.json() == {"event": event, "already_acknowledged": True}

    open_alarms = client.get(
        "/api/events", params={"alarms_only": True, "unacknowledged": True}, headers=supervisor
    ).json()
    assert [e["kind"] for e in open_alarms["events"]] == ["power_limit_exceeded", "relay_changed"]
    assert _audit(session_factory)[-1] == (
        "meter_event.acknowledge",
        "meter:EV-1",
        {
            "event_id": cover,
            "kind": "cover_open",
            "severity": "critical",
            "note": "seal replaced on site",
        },
    )
    acks = [a for a in _audit(session_factory) if a[0] == "meter_event.acknowledge"]
    assert len(acks) == 1


def test_unknown_event_and_an_event_that_is_no_alarm_are_refused_without_change(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    _meter(session_factory, "EV-1")
    _report(session_factory, "EV-1", TAMPER_DAY)
    ids = _ids_by_kind(session_factory)
    headers = bearer_headers(session_factory, "admin")
    audit_before = _audit(session_factory)

    missing = client.post(f"/api/events/{max(ids.values()) + 100}/ack", headers=headers)
    assert missing.status_code == 404
    assert missing.json()["detail"]["code"] == "event_not_found"
    info = client.post(f"/api/events/{ids['low_credit']}/ack", headers=headers)
    assert info.status_code == 409
    assert info.json()["detail"]["code"] == "not_an_alarm"
    too_long = client.post(
        f"/api/events/{ids['cover_open']}/ack", json={"note": "x" * 501}, headers=headers
    )
    assert too_long.status_code == 422

    with session_factory() as session:
        acknowledged = session.scalars(
            select(MeterEventRecord.id).where(MeterEventRecord.acknowledged_at.is_not(None))
        ).all()
    assert acknowledged == []
    assert _audit(session_factory) == audit_before


def test_bad_filters_answer_specific_codes(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    headers = bearer_headers(session_factory, "supervisor")
    inverted = client.get(
        "/api/events",
        params={"since": T0.isoformat(), "until": (T0 - timedelta(hours=1)).isoformat()},
        headers=headers,
    )
    assert inverted.status_code == 422
    assert inverted.json()["detail"]["code"] == "invalid_range"
    unknown = client.get("/api/events", params={"meter_id": 999}, headers=headers)
    assert unknown.status_code == 404
    assert unknown.json()["detail"]["code"] == "meter_not_found"
    assert client.get("/api/events", params={"kind": "bogus"}, headers=headers).status_code == 422
    naive = client.get("/api/events", params={"since": "2026-12-01T08:00:00"}, headers=headers)
    assert naive.status_code == 422


def test_a_clerk_may_neither_list_nor_acknowledge_events(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    _meter(session_factory, "EV-1")
    _report(session_factory, "EV-1", TAMPER_DAY)
    cover = _ids_by_kind(session_factory)["cover_open"]
    clerk = bearer_headers(session_factory, "clerk")
    assert client.get("/api/events", headers=clerk).status_code == 403
    assert client.post(f"/api/events/{cover}/ack", headers=clerk).status_code == 403
    assert client.get("/api/events").status_code == 401
