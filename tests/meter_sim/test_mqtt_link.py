"""The meter's MQTT link: refused connections, broker restarts."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest

from meter_sim.fleet import FleetError, MqttFleet, describe_fleet
from protocols.mqtt import MeterChannel, Status, TopicScheme, parse_status
from tests.meter_sim.conftest import MOSQUITTO, _free_port, _mosquitto
from tests.meter_sim.probe import probe

START = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)


async def test_a_fleet_without_a_broker_fails_with_a_clear_error() -> None:
    port = _free_port()
    with pytest.raises(FleetError, match=f"127.0.0.1:{port}"):
        async with MqttFleet("127.0.0.1", port, describe_fleet(2, seed=1), start=START):
            pass


@pytest.mark.skipif(MOSQUITTO is None, reason="needs mosquitto")
async def test_meters_reconnect_and_say_online_again_after_a_broker_restart() -> None:
    assert MOSQUITTO is not None
    port = _free_port()
    prefix = f"r-{uuid.uuid4().hex[:6]}/"
    config = describe_fleet(1, seed=2)[0]
    with _mosquitto(MOSQUITTO, port):
        fleet = MqttFleet("127.0.0.1", port, [config], topic_prefix=prefix, start=START)
        await fleet.__aenter__()
    try:
        with _mosquitto(MOSQUITTO, port):  # a fresh broker: no retained status yet
            async with probe("127.0.0.1", port, TopicScheme(prefix), v5=True) as p:
                status = await p.next_on(config.serial, MeterChannel.STATUS, timeout=15)
                assert parse_status(status) is Status.ONLINE
                reply, _ = await p.command(config.serial, {"v": 1, "id": "r1", "name": "read_now"})
                assert reply.status.value == "ok"
    finally:
        await asyncio.wait_for(fleet.__aexit__(None, None, None), 15)
