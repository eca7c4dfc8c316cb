"""The MQTT ingest worker acknowledges a message only once its batch is stored: what it
received but could not store comes back to the next worker of the same session, and what
it stored does not."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import aiomqtt
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from gridvend.broker import BrokerEndpoint
from headend.connectors.mqtt import MqttIngestWorker
from headend.ingest import InboundMessage, Ingestor
from headend.models import MeterLifecycle, Reading
from headend.registry import MeterRegistration, register_meter
from protocols.mqtt import MeterChannel, TelemetryReport, TopicScheme
from protocols.quantities import Quantity
from tests.eventually import eventually

SERIAL = "ACK-00001"
MESSAGES = 30
IngestFunction = Callable[[Sequence[InboundMessage]], object]


def _payloads() -> list[bytes]:
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=1)
    return [
        TelemetryReport(
            seq=k,
            ts=start + k * timedelta(minutes=15),
            values={Quantity.ENERGY_IMPORT_KWH: Decimal(100 + k)},
        ).to_bytes()
        for k in range(MESSAGES)
    ]


def _worker(broker: BrokerEndpoint, prefix: str, ingest: IngestFunction) -> MqttIngestWorker:
    # One client id for every worker of a test: the same persistent session.
    return MqttIngestWorker(
        broker.host,
        broker.port,
        scheme=TopicScheme(prefix=prefix),
        ingest=ingest,
        client_id=f"{prefix.strip('/')}-acks",
        batch_size=8,
        batch_wait_s=0.02,
        max_backoff_s=0.5,
    )


@contextlib.asynccontextmanager
async def _running(worker: MqttIngestWorker) -> AsyncIterator[None]:
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.connected.wait(), timeout=15)
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _publish_all(broker: BrokerEndpoint, prefix: str) -> None:
    topic = TopicScheme(prefix=prefix).meter_topic(SERIAL, MeterChannel.TELEMETRY)
    async with aiomqtt.Client(broker.host, broker.port) as client:
        for payload in _payloads():
            await client.publish(topic, payload, qos=1)


def _stored(session_factory: sessionmaker[Session]) -> int:
    with session_factory() as session:
        return session.scalar(select(func.count()).select_from(Reading)) or 0


def _register(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as session, session.begin():
        register_meter(
            session,
            MeterRegistration(serial=SERIAL, lifecycle=MeterLifecycle.INSTALLED),
            now=datetime.now(UTC) - timedelta(days=30),
        )


async def test_messages_a_worker_could_not_store_come_back_to_the_next_worker_of_its_session(
    session_factory: sessionmaker[Session], mqtt5_broker: BrokerEndpoint, topic_prefix: str
) -> None:
    _register(session_factory)
    attempts: list[int] = []

    def database_down(messages: Sequence[InboundMessage]) -> object:
        attempts.append(len(messages))
        raise OSError("database unreachable")

    async with _running(_worker(mqtt5_broker, topic_prefix, database_down)):
        await _publish_all(mqtt5_broker, topic_prefix)

        async def tried() -> bool:
            return len(attempts) >= 2  # the first batch, and its retry

        await eventually(tried, timeout_s=15)
    assert _stored(session_factory) == 0

    ingestor = Ingestor(session_factory, TopicScheme(prefix=topic_prefix))
    async with _running(_worker(mqtt5_broker, topic_prefix, ingestor.ingest)):

        async def all_stored() -> bool:
            return _stored(session_factory) == MESSAGES

        await eventually(all_stored, timeout_s=15)
    assert ingestor.stats.readings_duplicate == 0


async def test_stored_messages_are_acknowledged_and_not_delivered_again(
    session_factory: sessionmaker[Session], mqtt5_broker: BrokerEndpoint, topic_prefix: str
) -> None:
    _register(session_factory)
    first = Ingestor(session_factory, TopicScheme(prefix=topic_prefix))
    async with _running(_worker(mqtt5_broker, topic_prefix, first.ingest)):
        await _publish_all(mqtt5_broker, topic_prefix)

        async def all_stored() -> bool:
            return first.stats.messages == MESSAGES

        await eventually(all_stored, timeout_s=15)
        # The acks follow the commit on the event loop; give them a moment to leave.
        await asyncio.sleep(0.5)

    second = Ingestor(session_factory, TopicScheme(prefix=topic_prefix))
    async with _running(_worker(mqtt5_broker, topic_prefix, second.ingest)):
        await asyncio.sleep(1.0)
    assert second.stats.messages == 0
    assert _stored(session_factory) == MESSAGES
