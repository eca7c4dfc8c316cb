"""The MQTT ingest worker learns meters' retained online/offline state even in a share
group, and it reconnects and subscribes again after the broker goes away."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

import aiomqtt
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from gridvend.broker import BrokerEndpoint, free_port
from headend.connectors.mqtt import MqttIngestWorker
from headend.ingest import InboundMessage, Ingestor
from headend.models import Meter, MeterEventRecord, MeterLifecycle
from headend.registry import MeterRegistration, register_meter
from protocols.mqtt import EventKind, MeterChannel, MeterEvent, TopicScheme
from tests.eventually import eventually
from tests.own_broker import own_mosquitto


def _register(session_factory: sessionmaker[Session], serial: str) -> int:
    with session_factory() as session, session.begin():
        meter = register_meter(
            session,
            MeterRegistration(serial=serial, lifecycle=MeterLifecycle.INSTALLED),
            now=datetime.now(UTC) - timedelta(days=1),
        )
        return meter.id


def _online(session_factory: sessionmaker[Session], meter_id: int) -> bool | None:
    with session_factory() as session:
        return session.scalar(select(Meter.online).where(Meter.id == meter_id))


async def _becomes_online(
    session_factory: sessionmaker[Session], meter_id: int, online: bool
) -> None:
    async def applied() -> bool:
        return _online(session_factory, meter_id) is online

    await eventually(applied, timeout_s=15)


def _worker(
    session_factory: sessionmaker[Session],
    broker: BrokerEndpoint,
    prefix: str,
    name: str,
    seen: Counter[tuple[str, str]] | None = None,
) -> MqttIngestWorker:
    """A worker in the test's share group; ``seen`` counts (worker, topic) it stored."""
    scheme = TopicScheme(prefix=prefix)
    ingestor = Ingestor(session_factory, scheme)

    def ingest(messages: Sequence[InboundMessage]) -> object:
        stats = ingestor.ingest(messages)
        if seen is not None:  # counted once stored, so a test can read what it did
            seen.update((name, m.topic) for m in messages)
        return stats

    return MqttIngestWorker(
        broker.host,
        broker.port,
        scheme=scheme,
        ingest=ingest,
        client_id=f"{prefix.strip('/')}-{name}",
        share_group=f"group-{prefix.strip('/')}",
        max_backoff_s=0.5,
    )


@contextlib.asynccontextmanager
async def _running(worker: MqttIngestWorker) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(worker.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _publish(
    broker: BrokerEndpoint, topic: str, payload: bytes, *, retain: bool = False
) -> None:
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.publish(topic, payload, qos=1, retain=retain)


async def test_a_worker_in_a_share_group_applies_the_status_retained_before_it_started(
    session_factory: sessionmaker[Session], mqtt5_broker: BrokerEndpoint, topic_prefix: str
) -> None:
    scheme = TopicScheme(prefix=topic_prefix)
    gone = _register(session_factory, "RET-OFF-1")
    there = _register(session_factory, "RET-ON-1")
    # The meters said so (their last will and their greeting) before any head-end ran.
    status = MeterChannel.STATUS
    await _publish(mqtt5_broker, scheme.meter_topic("RET-OFF-1", status), b"offline", retain=True)
    await _publish(mqtt5_broker, scheme.meter_topic("RET-ON-1", status), b"online", retain=True)

    seen: Counter[tuple[str, str]] = Counter()
    workers = [_worker(session_factory, mqtt5_broker, topic_prefix, n, seen) for n in "ab"]
    topics = [scheme.meter_topic(serial, status) for serial in ("RET-OFF-1", "RET-ON-1")]
    async with _running(workers[0]), _running(workers[1]):

        async def every_worker_got_every_status() -> bool:
            return all(seen[(name, topic)] for name in "ab" for topic in topics)

        await eventually(every_worker_got_every_status, timeout_s=15)
        # Each status was applied twice, once per worker, to the same effect.
        assert _online(session_factory, gone) is False
        assert _online(session_factory, there) is True

        # A live status too reaches every worker, not just one member of the group.
        await _publish(mqtt5_broker, topics[0], b"online")

        async def every_worker_got_the_live_status() -> bool:
            return seen[("a", topics[0])] == seen[("b", topics[0])] == 2

        await eventually(every_worker_got_the_live_status, timeout_s=15)
        await _becomes_online(session_factory, gone, True)


async def test_the_worker_reconnects_and_subscribes_again_after_the_broker_restarts(
    session_factory: sessionmaker[Session], topic_prefix: str
) -> None:
    scheme = TopicScheme(prefix=topic_prefix)
    meter_id = _register(session_factory, "RECON-1")
    port = free_port()
    with own_mosquitto(port) as broker:
        worker = _worker(session_factory, broker, topic_prefix, "a")
        task = asyncio.create_task(worker.run())
        try:
            await asyncio.wait_for(worker.connected.wait(), timeout=15)
            await _publish(broker, scheme.meter_topic("RECON-1", MeterChannel.STATUS), b"online")
            await _becomes_online(session_factory, meter_id, True)
        except BaseException:
            task.cancel()
            raise
    try:

        async def disconnected() -> bool:
            return not worker.connected.is_set()

        await eventually(disconnected, timeout_s=15)
        # A fresh broker knows nothing of the worker's subscriptions: it must subscribe again.
        with own_mosquitto(port) as broker:
            await asyncio.wait_for(worker.connected.wait(), timeout=30)
            await _publish(broker, scheme.meter_topic("RECON-1", MeterChannel.STATUS), b"offline")
            event = MeterEvent(seq=1, ts=datetime.now(UTC), kind=EventKind.COVER_OPEN)
            await _publish(
                broker, scheme.meter_topic("RECON-1", MeterChannel.EVENTS), event.to_bytes()
            )

            async def both_received() -> bool:
                with session_factory() as session:
                    kinds = session.scalars(
                        select(MeterEventRecord.kind).where(MeterEventRecord.meter_id == meter_id)
                    ).all()
                return kinds == ["cover_open"] and _online(session_factory, meter_id) is False

            await eventually(both_received, timeout_s=15)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
