"""Two head-end workers on one MQTT 5 shared subscription split 200 simulated meters'
readings between them; duplicated and out-of-order publishes are neither lost nor doubled."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from gridvend.broker import BrokerEndpoint
from headend.connectors.mqtt import MqttIngestWorker
from headend.ingest import InboundMessage, Ingestor
from headend.models import Meter, MeterLifecycle, Reading, RejectedMessage
from headend.registry import MeterRegistration, register_meter
from meter_sim.faults import FaultConfig
from meter_sim.fleet import MqttFleet, describe_fleet
from protocols.mqtt import TopicScheme

METERS = 200
SPEED = 900.0  # one 15-minute interval per second
START = datetime(2026, 11, 17, 0, 0, tzinfo=UTC)
INTERVALS = 3


async def test_two_workers_share_the_fleet_without_losing_or_doubling_readings(
    session_factory: sessionmaker[Session], mqtt5_broker: BrokerEndpoint, topic_prefix: str
) -> None:
    faults = FaultConfig(duplicate_rate=0.2, reorder_rate=0.1)
    configs = describe_fleet(METERS, seed=3, faults=faults, three_phase_every=0)
    with session_factory() as session, session.begin():
        for config in configs:
            register_meter(
                session,
                MeterRegistration(
                    serial=config.serial,
                    meter_number=config.meter_number,
                    lifecycle=MeterLifecycle.INSTALLED,
                ),
                now=START - timedelta(days=1),
            )
    wall_start = datetime.now(UTC)

    def simulated_now() -> datetime:
        return START + (datetime.now(UTC) - wall_start) * SPEED

    scheme = TopicScheme(prefix=topic_prefix)
    received: Counter[str] = Counter()

    def worker(name: str) -> MqttIngestWorker:
        ingestor = Ingestor(session_factory, scheme, clock=simulated_now)

        def ingest(messages: Sequence[InboundMessage]) -> object:
            received[name] += len(messages)
            return ingestor.ingest(messages)

        return MqttIngestWorker(
            mqtt5_broker.host,
            mqtt5_broker.port,
            scheme=scheme,
            ingest=ingest,
            client_id=f"{topic_prefix.strip('/')}-{name}",
            share_group=f"group-{topic_prefix.strip('/')}",
        )

    workers = [worker("a"), worker("b")]
    tasks = [asyncio.create_task(w.run()) for w in workers]
    try:
        for w in workers:
            await asyncio.wait_for(w.connected.wait(), timeout=15)
        async with MqttFleet(
            mqtt5_broker.host,
            mqtt5_broker.port,
            configs,
            topic_prefix=topic_prefix,
            speed=SPEED,
            start=START,
        ):
            last_boundary = START + INTERVALS * timedelta(minutes=15)
            deadline = asyncio.get_running_loop().time() + 90
            while _energy_reads(session_factory, last_boundary) < METERS:
                assert asyncio.get_running_loop().time() < deadline, "readings missing"
                await asyncio.sleep(0.2)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    assert received["a"] > 0 and received["b"] > 0, f"not shared: {received}"
    with session_factory() as session:
        rows = session.execute(
            select(Meter.serial, Reading.ts)
            .join(Meter, Meter.id == Reading.meter_id)
            .where(Reading.quantity == "energy_import_kwh", Reading.ts <= last_boundary)
        ).all()
        conflicts = session.scalars(
            select(RejectedMessage.reason).where(RejectedMessage.reason.like("conflicting%"))
        ).all()
    boundaries = {START + n * timedelta(minutes=15) for n in range(1, INTERVALS + 1)}
    by_meter: dict[str, list[datetime]] = {}
    for serial, ts in rows:
        by_meter.setdefault(serial, []).append(ts)
    for config in configs:
        stamps = by_meter.get(config.serial, [])
        assert len(stamps) == len(set(stamps)), f"{config.serial} has a doubled reading"
        assert boundaries <= set(stamps), f"{config.serial} lost an interval reading"
    assert conflicts == []


def _energy_reads(session_factory: sessionmaker[Session], at: datetime) -> int:
    with session_factory() as session:
        return len(
            session.scalars(
                select(Reading.meter_id).where(
                    Reading.quantity == "energy_import_kwh", Reading.ts == at
                )
            ).all()
        )
