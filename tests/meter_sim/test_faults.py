"""Each fault on its own: sans-IO through the agent, and over a real broker."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from gridvend.broker import BrokerEndpoint
from meter_sim.agent import MqttMeterAgent
from meter_sim.faults import FaultConfig, FaultConfigError, FaultInjector
from meter_sim.fleet import MqttFleet, describe_fleet
from meter_sim.model import MeterModel
from protocols.mqtt import (
    EventKind,
    MeterChannel,
    Status,
    TopicScheme,
    parse_event,
    parse_status,
    parse_telemetry,
)
from tests.meter_sim.probe import probe

START = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
QUARTER = timedelta(minutes=15)


def _agent(faults: FaultConfig) -> MqttMeterAgent:
    config = replace(describe_fleet(1, seed=3)[0], faults=faults)
    return MqttMeterAgent(MeterModel(config, START), TopicScheme())


def _seqs(agent: MqttMeterAgent, intervals: int) -> list[int]:
    seqs = []
    for k in range(intervals):
        for message in agent.reading(START + k * QUARTER):
            if message.topic == agent.telemetry_topic:
                seqs.append(parse_telemetry(message.payload).seq)
    return seqs


def test_no_faults_gives_every_reading_once_in_order() -> None:
    assert _seqs(_agent(FaultConfig()), 6) == [0, 1, 2, 3, 4, 5]


def test_drop_loses_a_seeded_fraction_of_readings_the_same_way_every_run() -> None:
    first = _seqs(_agent(FaultConfig(drop_rate=0.5)), 40)
    again = _seqs(_agent(FaultConfig(drop_rate=0.5)), 40)
    assert first == again
    assert 5 < len(first) < 35
    assert first == sorted(set(first))


def test_duplicate_sends_readings_twice_with_the_same_sequence_number() -> None:
    assert _seqs(_agent(FaultConfig(duplicate_rate=1.0)), 3) == [0, 0, 1, 1, 2, 2]


def test_reorder_sends_a_held_reading_after_the_next_one() -> None:
    assert _seqs(_agent(FaultConfig(reorder_rate=1.0)), 6) == [1, 0, 3, 2, 5, 4]


def test_dropped_reply_is_resent_for_a_retried_command_id() -> None:
    agent = _agent(FaultConfig(drop_rate=1.0))
    body = b'{"v":1,"id":"c1","name":"read_now","reply_to":"r/1"}'
    first = agent.on_command(body, START, START)
    assert all(m.topic != "r/1" for m in first)
    retry = agent.on_command(body, START, START)
    assert [m.topic for m in retry] == ["r/1"]


def test_clock_drift_shows_in_reading_timestamps() -> None:
    agent = _agent(FaultConfig(clock_drift_ppm=1000))
    stamps = []
    for k in range(3):
        for message in agent.reading(START + k * 4 * QUARTER):
            if message.topic == agent.telemetry_topic:
                stamps.append(parse_telemetry(message.payload).ts)
    assert [s - START - k * 4 * QUARTER for k, s in enumerate(stamps)] == [
        timedelta(0), timedelta(seconds=3.6), timedelta(seconds=7.2),
    ]  # fmt: skip


def test_tamper_fault_publishes_tamper_events() -> None:
    agent = _agent(FaultConfig(tamper_per_day=96))
    kinds = []
    for k in range(24):
        for message in agent.reading(START + k * QUARTER):
            if message.topic == agent.events_topic:
                kinds.append(parse_event(message.payload).kind)
    assert {EventKind.COVER_OPEN, EventKind.MAGNETIC_TAMPER} & set(kinds)


def test_latency_and_modbus_faults_draw_from_the_seed() -> None:
    config = FaultConfig(latency_s=0.2, latency_jitter_s=0.1, modbus_exception_rate=0.5,
                         corrupt_frame_rate=0.5)  # fmt: skip
    a, b = FaultInjector(config, 1), FaultInjector(config, 1)
    draws_a = [(a.latency(), a.modbus_exception(), a.corrupt_frame()) for _ in range(20)]
    draws_b = [(b.latency(), b.modbus_exception(), b.corrupt_frame()) for _ in range(20)]
    assert draws_a == draws_b
    assert all(0.2 <= lat <= 0.3 for lat, _, _ in draws_a)
    assert {code for _, code, _ in draws_a} == {None, 4}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"drop_rate": 1.5},
        {"latency_s": -1.0},
        {"offline_intervals": 0},
        {"drop_rate": float("nan")},
    ],
)
def test_out_of_range_fault_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(FaultConfigError):
        FaultConfig(**kwargs)  # type: ignore[arg-type]


async def test_offline_fault_drops_the_link_the_will_says_offline_and_the_meter_returns(
    mqtt_broker: BrokerEndpoint,
) -> None:
    prefix = f"f-{uuid.uuid4().hex[:8]}/"
    config = replace(
        describe_fleet(1, seed=4)[0], faults=FaultConfig(offline_rate=1.0, offline_intervals=1)
    )
    v5 = mqtt_broker.supports_v5
    async with (
        probe(mqtt_broker.host, mqtt_broker.port, TopicScheme(prefix), v5=v5) as p,
        MqttFleet(
            mqtt_broker.host, mqtt_broker.port, [config], topic_prefix=prefix, mqtt_v5=v5,
            start=START, speed=3600,
        ),
    ):  # fmt: skip
        statuses = [
            parse_status(await p.next_on(config.serial, MeterChannel.STATUS)) for _ in range(3)
        ]
        seqs = [
            parse_telemetry(await p.next_on(config.serial, MeterChannel.TELEMETRY)).seq
            for _ in range(3)
        ]
    assert statuses == [Status.ONLINE, Status.OFFLINE, Status.ONLINE]
    assert seqs == [0, 1, 2]  # readings taken while offline are sent after reconnecting


async def test_duplicate_fault_reaches_the_head_end_as_duplicate_publishes(
    mqtt_broker: BrokerEndpoint,
) -> None:
    prefix = f"f-{uuid.uuid4().hex[:8]}/"
    config = replace(describe_fleet(1, seed=5)[0], faults=FaultConfig(duplicate_rate=1.0))
    v5 = mqtt_broker.supports_v5
    async with (
        probe(mqtt_broker.host, mqtt_broker.port, TopicScheme(prefix), v5=v5) as p,
        MqttFleet(
            mqtt_broker.host, mqtt_broker.port, [config], topic_prefix=prefix, mqtt_v5=v5,
            start=START, speed=3600,
        ),
    ):  # fmt: skip
        seqs = [
            parse_telemetry(await p.next_on(config.serial, MeterChannel.TELEMETRY)).seq
            for _ in range(4)
        ]
    assert seqs == [0, 0, 1, 1]


async def test_a_slow_meter_still_answers_commands(mqtt_broker: BrokerEndpoint) -> None:
    prefix = f"f-{uuid.uuid4().hex[:8]}/"
    config = replace(
        describe_fleet(1, seed=6)[0], faults=FaultConfig(latency_s=0.05, latency_jitter_s=0.05)
    )
    v5 = mqtt_broker.supports_v5
    async with (
        probe(mqtt_broker.host, mqtt_broker.port, TopicScheme(prefix), v5=v5) as p,
        MqttFleet(
            mqtt_broker.host, mqtt_broker.port, [config], topic_prefix=prefix, mqtt_v5=v5,
            start=START,
        ),
    ):  # fmt: skip
        reply, _ = await p.command(config.serial, {"v": 1, "id": "slow-1", "name": "read_now"})
    assert reply.status.value == "ok"
