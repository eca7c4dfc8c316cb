"""Commands through the whole head-end: REST API -> queue -> dispatcher -> broker ->
simulated meters, with the MQTT ingest worker keeping each meter's online status."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
import httpx
from sqlalchemy.orm import Session, sessionmaker

from gridvend.app import create_app
from gridvend.audit import AuditLog
from gridvend.auth import Auth
from gridvend.broker import BrokerEndpoint
from headend.commands import CommandQueue
from headend.commands.api import make_router
from headend.connectors.mqtt import MqttIngestWorker
from headend.ingest import Ingestor
from headend.models import Meter
from meter_sim import MqttFleet, describe_fleet
from protocols.mqtt import MeterChannel, TopicScheme
from tests.conftest import bearer_headers, make_security_module
from tests.headend.commands_support import LIVE_POLICY, add_meter, dispatcher_for, running


@contextlib.asynccontextmanager
async def _ingesting(worker: MqttIngestWorker) -> AsyncIterator[None]:
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.connected.wait(), timeout=10)
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _until(check: Any, timeout_s: float = 20) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def test_disconnect_over_rest_waits_for_an_offline_meter_and_is_confirmed_when_it_is_back(
    session_factory: sessionmaker[Session], mqtt_broker: BrokerEndpoint, topic_prefix: str
) -> None:
    online_config, offline_config = describe_fleet(2, seed=21)
    online_meter = add_meter(session_factory, online_config.serial)
    offline_meter = add_meter(session_factory, offline_config.serial)
    scheme = TopicScheme(topic_prefix)
    queue = CommandQueue(session_factory, audit=AuditLog(), policy=LIVE_POLICY)
    dispatcher = dispatcher_for(queue, mqtt_broker, topic_prefix, f"he-{uuid.uuid4().hex[:8]}")
    ingestor = Ingestor(session_factory, scheme)
    worker = MqttIngestWorker(
        mqtt_broker.host,
        mqtt_broker.port,
        scheme=scheme,
        ingest=ingestor.ingest,
        client_id=f"ingest-{uuid.uuid4().hex[:8]}",
        mqtt_v5=mqtt_broker.supports_v5,
    )
    app = create_app(session_factory, security_module=make_security_module(session_factory))
    app.include_router(
        make_router(session_factory, require=Auth(session_factory).require, queue=queue)
    )
    headers = bearer_headers(session_factory, "technician")

    def online(meter_id: int) -> bool | None:
        with session_factory() as session:
            meter = session.get(Meter, meter_id)
            assert meter is not None
            return meter.online

    async with (
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gridvend", headers=headers
        ) as api,
        _ingesting(worker),
        running(dispatcher),
        MqttFleet(
            mqtt_broker.host,
            mqtt_broker.port,
            [online_config],
            topic_prefix=topic_prefix,
            speed=1.0,
            mqtt_v5=mqtt_broker.supports_v5,
        ) as first_fleet,
    ):
        # The second meter's last will has told the broker it is offline.
        async with aiomqtt.Client(mqtt_broker.host, mqtt_broker.port) as client:
            status_topic = scheme.meter_topic(offline_config.serial, MeterChannel.STATUS)
            await client.publish(status_topic, b"offline", qos=1, retain=True)
        await _until(lambda: asyncio.to_thread(lambda: online(offline_meter) is False))

        async def post(meter_id: int) -> int:
            response = await api.post(
                f"/api/meters/{meter_id}/commands",
                json={"name": "disconnect", "reason": "balance exhausted"},
            )
            assert response.status_code == 202, response.text
            return int(response.json()["id"])

        async def command(command_id: int) -> dict[str, Any]:
            response = await api.get(f"/api/commands/{command_id}")
            assert response.status_code == 200
            return dict(response.json())

        async def confirmed(command_id: int) -> dict[str, Any] | None:
            body = await command(command_id)
            return body if body["state"] == "confirmed" else None

        waiting = await post(offline_meter)
        done = await post(online_meter)
        # The dispatcher has been round more than once: the online meter's disconnect
        # went out, was answered and read back. The offline meter's was not sent.
        await _until(lambda: confirmed(done))
        assert first_fleet.models[online_config.serial].relay_closed is False
        held = await command(waiting)
        assert (held["state"], held["attempts"]) == ("queued", 0)

        async with MqttFleet(
            mqtt_broker.host,
            mqtt_broker.port,
            [offline_config],
            topic_prefix=topic_prefix,
            speed=1.0,
            mqtt_v5=mqtt_broker.supports_v5,
        ) as second_fleet:
            body = await _until(lambda: confirmed(waiting))
            assert second_fleet.models[offline_config.serial].relay_closed is False
        assert (body["attempts"], body["readbacks"], body["confirmation"]) == (1, 1, "readback")
        listed = (await api.get(f"/api/meters/{offline_meter}/commands")).json()
        assert [c["id"] for c in listed] == [waiting]
