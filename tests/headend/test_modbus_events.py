"""Modbus meters' events reach the head-end: the poller reads the event count with the
energy group and the event log when it moved, against the simulator over TCP and RTU."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from gridvend.app import create_app
from headend.connectors.modbus import ModbusPoller, PollerConfig, RetryPolicy
from headend.connectors.modbus_models import ModbusPollOutcome
from headend.connectors.modbus_poll.events import EventState, event_points, new_events
from headend.events import Severity, event_severity
from headend.ingest import Ingestor
from headend.models import Meter, MeterEventRecord, MeterProtocol, RejectedMessage
from meter_sim.modbus_server import ModbusSimServer
from meter_sim.model import TamperKind
from protocols.modbus import EventRecord, RelayReason, get_profile
from protocols.mqtt import EventKind, TopicScheme
from tests.conftest import bearer_headers, make_security_module
from tests.headend.modbus_poll_fixtures import (
    START,
    SimFleet,
    StepClock,
    register_meters,
    sim_fleet,
    tcp_gateway,
)

FAST_RETRY = RetryPolicy(attempts=3, base_delay_s=0.005, max_delay_s=0.02)
QUARTER = timedelta(minutes=15)


def make_poller(session_factory: sessionmaker[Session], targets, clock) -> ModbusPoller:
    return ModbusPoller(
        session_factory,
        Ingestor(session_factory, TopicScheme()),
        targets,
        config=PollerConfig(timeout_s=0.3, retry=FAST_RETRY),
        clock=clock,
        rng=random.Random(7),
        worker_id="worker-a",
    )


def stored_events(session_factory: sessionmaker[Session]) -> Counter[tuple[int, str]]:
    with session_factory() as session:
        return Counter(session.execute(select(MeterEventRecord.meter_id, MeterEventRecord.kind)))


def alarms(session_factory: sessionmaker[Session]) -> list[tuple[str, int, str, str]]:
    app = create_app(session_factory, security_module=make_security_module(session_factory))
    headers = bearer_headers(session_factory, "technician")
    reply = TestClient(app).get("/api/events", params={"alarms_only": True}, headers=headers)
    assert reply.status_code == 200, reply.text
    return [(e["serial"], e["seq"], e["kind"], e["severity"]) for e in reply.json()["events"]]


def requests_per_poll(session_factory: sessionmaker[Session], meter_id: int) -> list[int]:
    with session_factory() as session:
        return list(
            session.scalars(
                select(ModbusPollOutcome.requests)
                .where(ModbusPollOutcome.meter_id == meter_id)
                .order_by(ModbusPollOutcome.id)
            )
        )


def serial_of(session_factory: sessionmaker[Session], meter_id: int) -> str:
    with session_factory() as session:
        meter = session.get(Meter, meter_id)
        assert meter is not None
        return meter.serial


async def tamper_is_listed_once_across_polls(
    session_factory: sessionmaker[Session], fleet: SimFleet, clock: StepClock
) -> None:
    eastron, dds = (t.meter_id for t in fleet.targets)
    poller = make_poller(session_factory, fleet.targets, clock)
    await poller.poll_interval("energy", START)
    # Each simulated meter logged its power-up: stored, not an alarm.
    assert stored_events(session_factory) == {(eastron, "power_up"): 1, (dds, "power_up"): 1}
    assert alarms(session_factory) == []

    clock.forward(minutes=20)
    sim = fleet.server_of(eastron)
    sim.model(fleet.units[eastron][1]).raise_tamper(TamperKind.COVER_OPEN, clock.current)
    fleet.server_of(dds).model(fleet.units[dds][1]).raise_tamper(TamperKind.MAGNETIC, clock.current)
    await poller.poll_interval("energy", START + QUARTER)
    await poller.read_now(eastron, "energy")
    clock.forward(minutes=15)
    await poller.poll_interval("energy", START + 2 * QUARTER)
    await poller.close()
    # A second worker starts with no memory of what was read: still nothing doubled.
    again = make_poller(session_factory, fleet.targets, clock)
    clock.forward(minutes=15)
    await again.poll_interval("energy", START + 3 * QUARTER)
    await again.close()

    assert alarms(session_factory) == [
        (serial_of(session_factory, dds), 2, "magnetic_tamper", "critical"),
        (serial_of(session_factory, eastron), 2, "cover_open", "critical"),
    ]
    assert stored_events(session_factory)[(eastron, "cover_open")] == 1
    # The log (one request more) was read only when the count moved: the first poll
    # (power-up) and the one after the tamper; the second worker found the count equal to
    # the newest sequence number stored and read no log.
    requests = requests_per_poll(session_factory, eastron)
    assert [r - min(requests) for r in requests] == [1, 1, 0, 0, 0]


async def test_a_tamper_on_a_tcp_meter_is_listed_as_an_alarm_exactly_once(
    session_factory: sessionmaker[Session],
):
    clock = StepClock()
    async with sim_fleet(session_factory, now=clock, gateways=(2,)) as fleet:
        await tamper_is_listed_once_across_polls(session_factory, fleet, clock)


async def test_a_tamper_on_an_rtu_meter_is_listed_as_an_alarm_exactly_once(
    session_factory: sessionmaker[Session],
):
    clock = StepClock()
    async with sim_fleet(session_factory, now=clock, rtu_meters=2) as fleet:
        await tamper_is_listed_once_across_polls(session_factory, fleet, clock)


@asynccontextmanager
async def one_gateway(
    session_factory: sessionmaker[Session], clock: StepClock, profiles: tuple[str, ...]
) -> AsyncIterator[tuple[SimFleet, ModbusSimServer]]:
    fleet = SimFleet()
    ids = register_meters(
        session_factory, len(profiles), prefix="EVGW", protocol=MeterProtocol.MODBUS_TCP
    )
    async with tcp_gateway(fleet, ids, now=clock, profiles=profiles) as sim:
        yield fleet, sim


async def test_a_meter_without_event_registers_is_polled_as_before(
    session_factory: sessionmaker[Session],
):
    clock = StepClock()
    async with one_gateway(session_factory, clock, ("eastron-sdm120",)) as (fleet, sim):
        meter_id = fleet.targets[0].meter_id
        poller = make_poller(session_factory, fleet.targets, clock)
        sim.model(1).raise_tamper(TamperKind.COVER_OPEN, clock.current)
        report = await poller.poll_interval("energy", START)
        clock.forward(minutes=20)
        await poller.poll_interval("energy", START + QUARTER)
        await poller.close()
    assert (report.stored, report.failed) == (1, 0)
    assert event_points(get_profile("eastron-sdm120")) == ()
    assert requests_per_poll(session_factory, meter_id) == [1, 1]  # the input block only
    assert stored_events(session_factory) == {}


async def test_a_log_that_wrapped_between_polls_stores_what_it_holds_and_records_the_loss(
    session_factory: sessionmaker[Session],
):
    clock = StepClock()
    async with one_gateway(session_factory, clock, ("eastron-sdm120-prepaid",)) as (fleet, sim):
        meter_id = fleet.targets[0].meter_id
        poller = make_poller(session_factory, fleet.targets, clock)
        await poller.poll_interval("energy", START)
        clock.forward(minutes=20)
        for _ in range(10):  # seq 2..11; the log holds the newest 8 (4..11)
            sim.model(1).raise_tamper(TamperKind.MAGNETIC, clock.current)
        await poller.poll_interval("energy", START + QUARTER)
        await poller.close()
    with session_factory() as session:
        seqs = sorted(session.scalars(select(MeterEventRecord.seq)))
        lost = session.scalars(select(RejectedMessage)).all()
    assert seqs == [1, *range(4, 12)]
    assert len(lost) == 1
    assert lost[0].reason.startswith("events_lost: event log wrapped: events 2..3 of 11")
    assert lost[0].topic == f"modbus/meters/{meter_id}/events"


# --- which records are new (pure) -------------------------------------------------------

T = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def record(seq: int, kind: EventKind = EventKind.POWER_DOWN, detail: int = 0) -> EventRecord:
    return EventRecord(seq, kind, T + timedelta(minutes=seq), detail)


def test_only_records_after_the_last_stored_sequence_number_are_new_oldest_first():
    log = [record(5), record(4), record(3)]
    found = new_events(log, EventState(5, None), last_seq=3)
    assert [e.seq for e in found.events] == [4, 5]
    assert found.gap == ""


def test_a_meter_that_restarted_its_numbering_offers_every_record():
    found = new_events([record(2), record(1)], EventState(2, None), last_seq=40)
    assert [e.seq for e in found.events] == [1, 2]
    assert found.gap == ""


@pytest.mark.parametrize(
    ("reason", "word", "severity_is_alarm"),
    [
        (RelayReason.CREDIT_EXHAUSTED, "credit_exhausted", False),
        (RelayReason.POWER_LIMIT, "power_limit_exceeded", False),
        (RelayReason.REMOTE, "remote", False),
        (RelayReason.TAMPER, "tamper", True),
    ],
)
def test_the_newest_relay_event_carries_the_reason_register_in_the_mqtt_words(
    reason: RelayReason, word: str, severity_is_alarm: bool
):
    log = [record(3, EventKind.RELAY_CHANGED, 0), record(2, EventKind.RELAY_CHANGED, 1)]
    found = new_events(log, EventState(3, reason), last_seq=1)
    older, newest = found.events
    assert dict(newest.detail) == {"closed": False, "reason": word}
    assert dict(older.detail) == {"closed": True}
    alarm = event_severity(newest.kind, newest.detail) is not Severity.INFO
    assert alarm is severity_is_alarm


async def test_a_relay_opened_by_command_on_a_modbus_meter_is_stored_but_not_an_alarm(
    session_factory: sessionmaker[Session],
):
    clock = StepClock()
    async with one_gateway(session_factory, clock, ("dds238-zn",)) as (fleet, sim):
        poller = make_poller(session_factory, fleet.targets, clock)
        clock.forward(minutes=5)
        sim.model(1).set_relay(False)
        await poller.poll_interval("energy", START)
        await poller.close()
    with session_factory() as session:
        relay = session.scalars(
            select(MeterEventRecord).where(MeterEventRecord.kind == "relay_changed")
        ).one()
    assert (relay.detail, relay.severity) == ({"closed": False, "reason": "remote"}, "info")
    assert alarms(session_factory) == []
