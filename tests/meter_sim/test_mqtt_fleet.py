"""The MQTT fleet driven only over a real broker, as the head-end sees it."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from gridvend.broker import BrokerEndpoint
from meter_sim.fleet import MqttFleet, describe_fleet
from meter_sim.model import MeterConfig
from protocols.mqtt import (
    EventKind,
    MeterChannel,
    ReplyStatus,
    Status,
    TopicScheme,
    parse_event,
    parse_status,
    parse_telemetry,
)
from protocols.quantities import Quantity
from tests.meter_sim.probe import Probe, probe
from tests.meter_sim.vend import Vendor

START = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)


@pytest.fixture
async def one_meter(mqtt_broker: BrokerEndpoint) -> AsyncIterator[tuple[Probe, MeterConfig]]:
    """One token meter with 50 kWh of credit, at x60, seen by a probe."""
    prefix = f"t-{uuid.uuid4().hex[:8]}/"
    config = describe_fleet(1, seed=7)[0]
    v5 = mqtt_broker.supports_v5
    async with (
        probe(mqtt_broker.host, mqtt_broker.port, TopicScheme(prefix), v5=v5) as p,
        MqttFleet(
            mqtt_broker.host,
            mqtt_broker.port,
            [config],
            topic_prefix=prefix,
            mqtt_v5=v5,
            start=START,
        ),
    ):
        await p.next_on(config.serial, MeterChannel.STATUS)
        await p.next_on(config.serial, MeterChannel.TELEMETRY)
        yield p, config


async def test_meters_publish_online_status_and_a_reading_at_start(
    mqtt_broker: BrokerEndpoint,
) -> None:
    prefix = f"t-{uuid.uuid4().hex[:8]}/"
    configs = describe_fleet(3, seed=1)
    v5 = mqtt_broker.supports_v5
    async with probe(mqtt_broker.host, mqtt_broker.port, TopicScheme(prefix), v5=v5) as p:
        async with MqttFleet(
            mqtt_broker.host,
            mqtt_broker.port,
            configs,
            topic_prefix=prefix,
            mqtt_v5=v5,
            start=START,
        ):
            for config in configs:
                status = await p.next_on(config.serial, MeterChannel.STATUS)
                assert parse_status(status) is Status.ONLINE
                report = parse_telemetry(await p.next_on(config.serial, MeterChannel.TELEMETRY))
                assert report.seq == 0
                assert report.ts == START
                assert report.values[Quantity.ENERGY_IMPORT_KWH] == config.initial_energy_kwh
        for config in configs:
            status = await p.next_on(config.serial, MeterChannel.STATUS)
            assert parse_status(status) is Status.OFFLINE


async def test_readings_follow_every_interval_with_growing_energy(
    mqtt_broker: BrokerEndpoint,
) -> None:
    prefix = f"t-{uuid.uuid4().hex[:8]}/"
    config = describe_fleet(1, seed=2)[0]
    v5 = mqtt_broker.supports_v5
    async with (
        probe(mqtt_broker.host, mqtt_broker.port, TopicScheme(prefix), v5=v5) as p,
        MqttFleet(
            mqtt_broker.host,
            mqtt_broker.port,
            [config],
            topic_prefix=prefix,
            mqtt_v5=v5,
            start=START,
            speed=7200,
            interval_s=900,
        ),
    ):
        reports = [
            parse_telemetry(await p.next_on(config.serial, MeterChannel.TELEMETRY))
            for _ in range(4)
        ]
    assert [r.seq for r in reports] == [0, 1, 2, 3]
    assert [r.ts.minute for r in reports] == [0, 15, 30, 45]
    energies = [r.values[Quantity.ENERGY_IMPORT_KWH] for r in reports]
    assert energies == sorted(energies)
    assert energies[-1] > energies[0]


async def test_disconnect_and_connect_commands_are_answered_on_reply_to(
    one_meter: tuple[Probe, MeterConfig],
) -> None:
    p, config = one_meter
    reply, _ = await p.command(config.serial, {"v": 1, "id": "c-1", "name": "disconnect"})
    assert reply.status is ReplyStatus.OK
    assert reply.id == "c-1"
    assert reply.meter_id == config.serial
    assert reply.result["relay_closed"] is False
    assert parse_event(await p.next_on(config.serial, MeterChannel.EVENTS)).kind is (
        EventKind.POWER_UP
    )
    event = parse_event(await p.next_on(config.serial, MeterChannel.EVENTS))
    assert event.kind is EventKind.RELAY_CHANGED
    assert event.detail == {"closed": False, "reason": "remote"}
    reply, _ = await p.command(config.serial, {"v": 1, "id": "c-2", "name": "connect"})
    assert reply.status is ReplyStatus.OK
    assert reply.result["relay_closed"] is True


@pytest.mark.mqtt5
async def test_mqtt5_reply_goes_to_response_topic_with_the_correlation_data(
    one_meter: tuple[Probe, MeterConfig],
) -> None:
    p, config = one_meter
    reply, message = await p.command(
        config.serial,
        {"v": 1, "id": "c-5", "name": "read_now"},
        use_response_topic=True,
        correlation=b"\x01\x02corr",
    )
    assert reply.status is ReplyStatus.OK
    assert message.properties is not None
    assert message.properties.CorrelationData == b"\x01\x02corr"
    report = parse_telemetry(await p.next_on(config.serial, MeterChannel.TELEMETRY))
    assert str(report.values[Quantity.ENERGY_IMPORT_KWH]) == reply.result["value.energy_import_kwh"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"v": 1, "id": "b-1", "name": "set_power_limit", "params": {"watts": -5}}, "power limit"),
        ({"v": 1, "id": "b-2", "name": "set_power_limit", "params": {"amps": 5}}, "unknown"),
        ({"v": 1, "id": "b-3", "name": "explode"}, "name"),
        ({"v": 1, "id": "b-4", "name": "set_clock", "params": {"time": "yesterday"}}, "ISO"),
        ({"v": 1, "id": "b-5", "name": "push_token", "params": {"token": 12}}, "token"),
    ],
)
async def test_bad_commands_get_an_error_reply_and_change_nothing(
    one_meter: tuple[Probe, MeterConfig], body: dict[str, object], reason: str
) -> None:
    p, config = one_meter
    before, _ = await p.command(config.serial, {"v": 1, "id": "r-0", "name": "read_now"})
    reply, _ = await p.command(config.serial, body)
    assert reply.status is ReplyStatus.ERROR
    assert reply.id == body["id"]
    assert reply.reason is not None and reason in reply.reason
    after, _ = await p.command(config.serial, {"v": 1, "id": "r-1", "name": "read_now"})
    for key in ("relay_closed", "relay_reason"):
        assert after.result[key] == before.result[key]
    assert "power_limit_w" not in after.result


async def test_a_payload_that_is_not_json_gets_no_reply_but_the_meter_keeps_working(
    one_meter: tuple[Probe, MeterConfig],
) -> None:
    p, config = one_meter
    await p.client.publish(
        p.scheme.meter_topic(config.serial, MeterChannel.COMMAND), b"\xff{", qos=1
    )
    reply, _ = await p.command(config.serial, {"v": 1, "id": "ok-1", "name": "read_now"})
    assert reply.status is ReplyStatus.OK


async def test_power_limit_is_set_by_command(one_meter: tuple[Probe, MeterConfig]) -> None:
    p, config = one_meter
    reply, _ = await p.command(
        config.serial,
        {"v": 1, "id": "pl-1", "name": "set_power_limit", "params": {"watts": 3000}},
    )
    assert reply.status is ReplyStatus.OK
    assert reply.result["power_limit_w"] == 3000
    assert Decimal(str(reply.result["credit_kwh"])) > 0


async def test_pushed_credit_token_is_accepted_then_used(
    one_meter: tuple[Probe, MeterConfig],
) -> None:
    p, config = one_meter
    token = Vendor(config).credit(Decimal(12), START)
    body = {"v": 1, "id": "t-1", "name": "push_token", "params": {"token": token}}
    reply, _ = await p.command(config.serial, body)
    assert reply.status is ReplyStatus.OK
    assert reply.result["token_status"] == "accept"
    assert reply.result["credit_added_kwh"] == "12.0"
    again, _ = await p.command(config.serial, {**body, "id": "t-2"})
    assert again.status is ReplyStatus.ERROR
    assert again.result["token_status"] == "used"
    assert again.reason is not None and again.reason.startswith("token used")


async def test_a_repeated_command_id_is_answered_without_running_it_again(
    one_meter: tuple[Probe, MeterConfig],
) -> None:
    p, config = one_meter
    token = Vendor(config).credit(Decimal(3), START)
    body = {"v": 1, "id": "dup-1", "name": "push_token", "params": {"token": token}}
    first, _ = await p.command(config.serial, body)
    second, _ = await p.command(config.serial, body)
    assert first == second
    assert first.status is ReplyStatus.OK


async def test_a_retained_command_is_ignored(mqtt_broker: BrokerEndpoint) -> None:
    prefix = f"t-{uuid.uuid4().hex[:8]}/"
    config = describe_fleet(1, seed=12)[0]
    scheme = TopicScheme(prefix)
    v5 = mqtt_broker.supports_v5
    async with probe(mqtt_broker.host, mqtt_broker.port, scheme, v5=v5) as p:
        stale = {"v": 1, "id": "stale-1", "name": "disconnect", "reply_to": p.reply_topic}
        await p.client.publish(
            scheme.meter_topic(config.serial, MeterChannel.COMMAND),
            json.dumps(stale).encode(),
            qos=1,
            retain=True,
        )
        async with MqttFleet(
            mqtt_broker.host, mqtt_broker.port, [config], topic_prefix=prefix, mqtt_v5=v5,
            start=START,
        ) as fleet:  # fmt: skip
            reply, _ = await p.command(config.serial, {"v": 1, "id": "now-1", "name": "read_now"})
            assert reply.id == "now-1"
            assert reply.result["relay_closed"] is True
            assert fleet.stats().bad_commands >= 1  # amqtt may deliver it twice
        await p.client.publish(
            scheme.meter_topic(config.serial, MeterChannel.COMMAND), b"", qos=1, retain=True
        )
