"""On-demand Modbus reads through the API: the running poller reads a simulated meter over
Modbus TCP now, the values are stored through ingestion, and refusals are specific."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from gridvend.app import create_app
from gridvend.runtime import FreshTargetsReader
from headend.commissioning import MeterAddress
from headend.connectors.modbus import (
    ModbusPoller,
    PollerConfig,
    PollTarget,
    RetryPolicy,
    channel_resource,
    claim_leases,
)
from headend.ingest import Ingestor
from headend.meter_link import MeterLinkError
from headend.models import Meter, MeterLifecycle, MeterProtocol, Reading
from headend.read_now_api import OnDemandReader
from meter_sim.faults import FaultConfig
from protocols.mqtt import TopicScheme
from protocols.quantities import Quantity
from tests.conftest import bearer_headers, make_security_module
from tests.headend.modbus_poll_fixtures import StepClock, register_meters, sim_fleet


def _poller(
    session_factory: sessionmaker[Session], targets: Sequence[PollTarget], clock: StepClock
) -> ModbusPoller:
    return ModbusPoller(
        session_factory,
        Ingestor(session_factory, TopicScheme()),
        targets,
        config=PollerConfig(
            timeout_s=0.15, retry=RetryPolicy(attempts=2, base_delay_s=0.005, max_delay_s=0.02)
        ),
        clock=clock,
        rng=random.Random(7),
        worker_id="api-worker",
    )


@asynccontextmanager
async def _api(
    session_factory: sessionmaker[Session], reader: OnDemandReader | None
) -> AsyncIterator[httpx.AsyncClient]:
    # In the test's event loop, where the poller and the simulated gateway run.
    app = create_app(
        session_factory,
        security_module=make_security_module(session_factory),
        modbus_reader=reader,
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gridvend") as client:
        yield client


async def test_an_operator_reads_a_modbus_meter_now_and_the_values_are_stored(
    session_factory: sessionmaker[Session],
) -> None:
    clock = StepClock()
    async with sim_fleet(session_factory, now=clock, gateways=(2,)) as fleet:
        poller = _poller(session_factory, fleet.targets, clock)
        meter_id = fleet.targets[0].meter_id
        clock.forward(minutes=7, seconds=3)
        async with _api(session_factory, poller) as client:
            headers = bearer_headers(session_factory, "clerk")
            now = await client.post(f"/api/meters/{meter_id}/read-now", headers=headers)
            energy = await client.post(
                f"/api/meters/{meter_id}/read-now", json={"group": "energy"}, headers=headers
            )
        await poller.close()
    assert now.status_code == 200, now.text
    body = now.json()
    assert (body["meter_id"], body["group"], body["source"]) == (
        meter_id,
        "instantaneous",
        "modbus",
    )
    assert datetime.fromisoformat(body["ts"]) == clock.current
    assert Quantity.VOLTAGE_V.value in body["values"]
    assert Quantity.ENERGY_IMPORT_KWH.value not in body["values"]
    assert energy.status_code == 200, energy.text
    assert Quantity.ENERGY_IMPORT_KWH.value in energy.json()["values"]
    with session_factory() as session:
        stored = session.execute(
            select(Reading.quantity, Reading.source).where(
                Reading.meter_id == meter_id, Reading.ts == clock.current
            )
        ).all()
    read = set(body["values"]) | set(energy.json()["values"])
    assert {q for q, _ in stored} == read
    assert {s for _, s in stored} == {"modbus"}


async def test_a_meter_registered_after_the_last_target_refresh_is_read_all_the_same(
    session_factory: sessionmaker[Session],
) -> None:
    clock = StepClock()
    async with sim_fleet(session_factory, now=clock, gateways=(1,)) as fleet:
        poller = _poller(session_factory, [], clock)  # started before the meter was known
        reader = FreshTargetsReader(poller, lambda: list(fleet.targets))
        async with _api(session_factory, reader) as client:
            response = await client.post(
                f"/api/meters/{fleet.targets[0].meter_id}/read-now",
                headers=bearer_headers(session_factory, "technician"),
            )
        await poller.close()
    assert response.status_code == 200, response.text
    assert Quantity.VOLTAGE_V.value in response.json()["values"]


async def test_a_meter_that_does_not_answer_is_a_read_failure_with_its_reason(
    session_factory: sessionmaker[Session],
) -> None:
    clock = StepClock()
    async with sim_fleet(
        session_factory, now=clock, gateways=(1,), tcp_faults=FaultConfig(drop_rate=1.0)
    ) as fleet:
        poller = _poller(session_factory, fleet.targets, clock)
        async with _api(session_factory, poller) as client:
            response = await client.post(
                f"/api/meters/{fleet.targets[0].meter_id}/read-now",
                headers=bearer_headers(session_factory, "technician"),
            )
        await poller.close()
    assert response.status_code == 502
    detail = response.json()["detail"]
    assert (detail["code"], detail["reason"]) == ("read_failed", "timeout")
    with session_factory() as session:
        assert session.scalars(select(Reading.id)).all() == []


async def test_a_channel_another_worker_holds_is_answered_busy(
    session_factory: sessionmaker[Session],
) -> None:
    clock = StepClock()
    async with sim_fleet(session_factory, now=clock, gateways=(1,)) as fleet:
        target = fleet.targets[0]
        with session_factory() as session, session.begin():
            claim_leases(
                session,
                [channel_resource(target.channel)],
                "worker-elsewhere",
                datetime.now(UTC),
                timedelta(minutes=2),
            )
        poller = _poller(session_factory, fleet.targets, clock)
        async with _api(session_factory, poller) as client:
            response = await client.post(
                f"/api/meters/{target.meter_id}/read-now",
                headers=bearer_headers(session_factory, "supervisor"),
            )
        await poller.close()
    assert response.status_code == 409
    assert response.json()["detail"]["code"] == "channel_busy"


async def test_read_now_refusals_answer_specific_codes(
    session_factory: sessionmaker[Session],
) -> None:
    clock = StepClock()
    [mqtt_meter] = register_meters(session_factory, 1, prefix="MQ", protocol=MeterProtocol.MQTT)
    [unpolled] = register_meters(session_factory, 1, prefix="NP", protocol=MeterProtocol.MODBUS_TCP)
    [retired] = register_meters(session_factory, 1, prefix="OLD", protocol=MeterProtocol.MODBUS_TCP)
    with session_factory() as session, session.begin():
        meter = session.get(Meter, retired)
        assert meter is not None
        meter.lifecycle = MeterLifecycle.DECOMMISSIONED.value
    async with sim_fleet(session_factory, now=clock, gateways=(1,)) as fleet:
        poller = _poller(session_factory, fleet.targets, clock)
        polled = fleet.targets[0].meter_id
        async with _api(session_factory, poller) as client:
            headers = bearer_headers(session_factory, "technician")

            async def code(meter_id: int, **body: object) -> tuple[int, str]:
                response = await client.post(
                    f"/api/meters/{meter_id}/read-now", json=body or None, headers=headers
                )
                return response.status_code, response.json()["detail"]["code"]

            assert await code(999_999) == (404, "meter_not_found")
            assert await code(mqtt_meter) == (409, "unsupported_transport")
            assert await code(unpolled) == (409, "meter_not_polled")
            assert await code(retired) == (409, "meter_decommissioned")
            assert await code(polled, group="bogus") == (422, "unknown_group")
            other = await client.post(
                f"/api/meters/{polled}/read-now",
                json={"group": "energy", "extra": 1},
                headers=headers,
            )
            assert other.status_code == 422
            anonymous = await client.post(f"/api/meters/{polled}/read-now")
            assert anonymous.status_code == 401
        await poller.close()
        async with _api(session_factory, None) as client:
            response = await client.post(
                f"/api/meters/{polled}/read-now",
                headers=bearer_headers(session_factory, "technician"),
            )
    assert response.status_code == 503
    assert response.json()["detail"]["code"] == "poller_unavailable"
    with session_factory() as session:
        assert session.scalars(select(Reading.id)).all() == []


async def test_commissioning_links_go_through_the_poller_holding_the_line(
    session_factory: sessionmaker[Session],
) -> None:
    clock = StepClock()
    async with sim_fleet(session_factory, now=clock, gateways=(2,)) as fleet:
        first, second = fleet.targets
        poller = _poller(session_factory, [], clock)  # the meters are found on first use
        access = FreshTargetsReader(poller, lambda: list(fleet.targets))
        address = MeterAddress(first.meter_id, "S-1", "S-1", MeterProtocol.MODBUS_TCP.value)
        async with access.meter_link(address) as link:
            assert await link.read_relay() is True
            # While the session holds the line, another worker cannot take it.
            with session_factory() as session, session.begin():
                won = claim_leases(
                    session,
                    [channel_resource(second.channel)],
                    "worker-b",
                    datetime.now(UTC),
                    timedelta(minutes=1),
                )
            assert won == set()
        # The line stays this worker's: another worker's technician session is refused.
        other = _poller(session_factory, fleet.targets, clock)
        other.worker_id = "worker-b"
        elsewhere = FreshTargetsReader(other, lambda: list(fleet.targets))
        with pytest.raises(MeterLinkError, match="held by"):
            async with elsewhere.meter_link(address):
                pass
        await poller.close()
        await other.close()
