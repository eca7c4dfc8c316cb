"""Commands end to end: queue -> dispatcher -> real MQTT broker -> simulated meters -> replies
-> read-back -> confirmed, including restarts of the dispatcher and lost replies."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sqlalchemy.orm import Session, sessionmaker

from gridvend.audit import AuditLog
from gridvend.broker import BrokerEndpoint, free_port
from headend.commands import (
    CommandQueue,
    CommandState,
    CommandStatus,
    Confirmation,
    RetryPolicy,
)
from meter_sim import FaultConfig, MqttFleet, describe_fleet
from protocols.mqtt import Command, MeterChannel, TopicScheme
from tests.headend.commands_support import (
    LIVE_POLICY,
    add_meter,
    dispatcher_for,
    rejected_reasons,
    running,
)
from tests.own_broker import own_mosquitto


def _queue(session_factory: sessionmaker[Session]) -> CommandQueue:
    return CommandQueue(session_factory, audit=AuditLog(), policy=LIVE_POLICY, rng=random.Random(3))


@contextlib.asynccontextmanager
async def _fleet(
    broker: BrokerEndpoint,
    prefix: str,
    session_factory: sessionmaker[Session],
    *,
    count: int = 2,
    mqtt_v5: bool | None = None,
    faults: FaultConfig | None = None,
) -> AsyncIterator[tuple[MqttFleet, list[int]]]:
    """``count`` simulated meters, registered in the head-end; yields (fleet, meter ids)."""
    configs = describe_fleet(count, seed=5, **({"faults": faults} if faults else {}))
    meter_ids = [add_meter(session_factory, c.serial) for c in configs]
    v5 = broker.supports_v5 if mqtt_v5 is None else mqtt_v5
    async with MqttFleet(
        broker.host, broker.port, configs, topic_prefix=prefix, speed=1.0, mqtt_v5=v5
    ) as fleet:
        yield fleet, meter_ids


async def _final(queue: CommandQueue, command_id: int, timeout_s: float = 30) -> CommandStatus:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        status = await asyncio.to_thread(queue.status, command_id)
        if status.final:
            return status
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"command {command_id} still {status.state}: {status}")
        await asyncio.sleep(0.02)


def _instance() -> str:
    return f"he-{uuid.uuid4().hex[:8]}"


def _serial(fleet: MqttFleet, index: int) -> str:
    return sorted(fleet.models)[index]


async def test_disconnect_is_confirmed_by_reading_the_meter_back(
    session_factory: sessionmaker[Session], mqtt_broker: BrokerEndpoint, topic_prefix: str
) -> None:
    queue = _queue(session_factory)
    async with _fleet(mqtt_broker, topic_prefix, session_factory) as (fleet, meters):
        dispatcher = dispatcher_for(queue, mqtt_broker, topic_prefix, _instance())
        async with running(dispatcher):
            command_id = queue.request(
                meters[0], "disconnect", requested_by="tech", reason="relay test"
            )
            status = await _final(queue, command_id)
        model = fleet.models[_serial(fleet, 0)]
        assert model.relay_closed is False
        assert fleet.models[_serial(fleet, 1)].relay_closed is True
    assert (status.state, status.confirmation) == (CommandState.CONFIRMED, Confirmation.READBACK)
    assert (status.attempts, status.readbacks) == (1, 1)
    assert status.result is not None and status.result["relay_closed"] is False
    known = queue.known_control_state(meters[0])
    assert known is not None and known.relay_closed is False


async def test_second_disconnect_is_confirmed_without_sending_another_disconnect(
    session_factory: sessionmaker[Session], mqtt_broker: BrokerEndpoint, topic_prefix: str
) -> None:
    queue = _queue(session_factory)
    async with _fleet(mqtt_broker, topic_prefix, session_factory, count=1) as (fleet, meters):
        agent_stats = next(link.agent.stats for link in fleet._links)
        async with running(dispatcher_for(queue, mqtt_broker, topic_prefix, _instance())):
            first = queue.request(meters[0], "disconnect", requested_by="engine", reason="a")
            await _final(queue, first)
            commands_before = agent_stats.commands
            second = queue.request(meters[0], "disconnect", requested_by="engine", reason="b")
            status = await _final(queue, second)
        assert agent_stats.commands - commands_before == 1  # one read_now, no disconnect
    assert (status.state, status.confirmation) == (
        CommandState.CONFIRMED,
        Confirmation.ALREADY_IN_STATE,
    )
    assert status.attempts == 0


async def test_disconnect_then_connect_for_one_meter_run_in_order(
    session_factory: sessionmaker[Session], mqtt_broker: BrokerEndpoint, topic_prefix: str
) -> None:
    queue = _queue(session_factory)
    async with _fleet(mqtt_broker, topic_prefix, session_factory, count=1) as (fleet, meters):
        disconnect = queue.request(meters[0], "disconnect", requested_by="engine", reason="")
        connect = queue.request(meters[0], "connect", requested_by="engine", reason="top-up")
        async with running(dispatcher_for(queue, mqtt_broker, topic_prefix, _instance())):
            first = await _final(queue, disconnect)
            second = await _final(queue, connect)
        assert fleet.models[_serial(fleet, 0)].relay_closed is True
    assert first.state == second.state == CommandState.CONFIRMED
    assert first.finished_at is not None and second.first_sent_at is not None
    assert first.finished_at <= second.first_sent_at


async def test_power_limit_is_confirmed_by_reading_it_back(
    session_factory: sessionmaker[Session], mqtt_broker: BrokerEndpoint, topic_prefix: str
) -> None:
    queue = _queue(session_factory)
    async with _fleet(mqtt_broker, topic_prefix, session_factory, count=1) as (fleet, meters):
        async with running(dispatcher_for(queue, mqtt_broker, topic_prefix, _instance())):
            command_id = queue.request(
                meters[0], "set_power_limit", {"watts": 2500}, requested_by="tech", reason=""
            )
            status = await _final(queue, command_id)
        assert fleet.models[_serial(fleet, 0)].power_limit_w == 2500
    assert (status.state, status.confirmation) == (CommandState.CONFIRMED, Confirmation.READBACK)
    known = queue.known_control_state(meters[0])
    assert known is not None and known.power_limit_w == 2500


async def test_token_the_meter_rejects_fails_with_the_meters_reason(
    session_factory: sessionmaker[Session], mqtt_broker: BrokerEndpoint, topic_prefix: str
) -> None:
    queue = _queue(session_factory)
    dispatcher = dispatcher_for(queue, mqtt_broker, topic_prefix, _instance())
    async with (
        _fleet(mqtt_broker, topic_prefix, session_factory, count=1) as (_, meters),
        running(dispatcher),
    ):
        command_id = queue.request(
            meters[0],
            "push_token",
            {"token": "1234-5678-9012-3456-7890"},
            requested_by="clerk",
            reason="",
        )
        status = await _final(queue, command_id)
    assert status.state == CommandState.FAILED
    assert status.last_error is not None and status.last_error.startswith("meter refused: token")
    assert status.attempts == 1


async def test_read_now_is_confirmed_by_the_meters_reply_with_its_registers(
    session_factory: sessionmaker[Session], mqtt_broker: BrokerEndpoint, topic_prefix: str
) -> None:
    queue = _queue(session_factory)
    dispatcher = dispatcher_for(queue, mqtt_broker, topic_prefix, _instance())
    async with (
        _fleet(mqtt_broker, topic_prefix, session_factory, count=1) as (_, meters),
        running(dispatcher),
    ):
        command_id = queue.request(meters[0], "read_now", requested_by="tech", reason="")
        status = await _final(queue, command_id)
    assert (status.state, status.confirmation) == (
        CommandState.CONFIRMED,
        Confirmation.METER_REPLY,
    )
    assert status.result is not None and "value.energy_import_kwh" in status.result


async def test_disconnect_queued_while_the_head_end_is_down_is_sent_after_restart(
    session_factory: sessionmaker[Session], mqtt_broker: BrokerEndpoint, topic_prefix: str
) -> None:
    instance = _instance()
    async with _fleet(mqtt_broker, topic_prefix, session_factory, count=1) as (fleet, meters):
        before = _queue(session_factory)
        command_id = before.request(meters[0], "disconnect", requested_by="engine", reason="")
        # The head-end process ends here; a new one starts with a fresh queue object.
        after = _queue(session_factory)
        async with running(dispatcher_for(after, mqtt_broker, topic_prefix, instance)):
            status = await _final(after, command_id)
        assert fleet.models[_serial(fleet, 0)].relay_closed is False
    assert (status.state, status.confirmation) == (CommandState.CONFIRMED, Confirmation.READBACK)


async def test_disconnect_marked_sent_before_a_crash_is_resent_and_confirmed(
    session_factory: sessionmaker[Session], mqtt_broker: BrokerEndpoint, topic_prefix: str
) -> None:
    instance = _instance()
    async with _fleet(mqtt_broker, topic_prefix, session_factory, count=1) as (fleet, meters):
        crashed = _queue(session_factory)
        command_id = crashed.request(meters[0], "disconnect", requested_by="engine", reason="")
        # The worst moment to die: "sent" is committed, the publish never happened.
        [lost] = crashed.claim_due(instance=instance)
        assert lost.message.name == "disconnect"
        assert crashed.status(command_id).state == CommandState.SENT

        restarted = _queue(session_factory)
        async with running(dispatcher_for(restarted, mqtt_broker, topic_prefix, instance)):
            status = await _final(restarted, command_id)
        assert fleet.models[_serial(fleet, 0)].relay_closed is False
    assert (status.state, status.confirmation) == (CommandState.CONFIRMED, Confirmation.READBACK)
    assert status.attempts == 2  # re-sent once after the reply deadline, same correlation id


async def test_reply_arriving_while_the_head_end_is_down_is_picked_up_after_restart(
    session_factory: sessionmaker[Session], mqtt5_broker: BrokerEndpoint, topic_prefix: str
) -> None:
    instance = _instance()
    slow = RetryPolicy(reply_timeout=timedelta(seconds=60), default_ttl=timedelta(minutes=5))
    async with _fleet(mqtt5_broker, topic_prefix, session_factory, count=1) as (fleet, meters):
        first = CommandQueue(session_factory, audit=AuditLog(), policy=slow)
        dispatcher = dispatcher_for(first, mqtt5_broker, topic_prefix, instance)
        async with running(dispatcher):
            pass  # the broker now holds a persistent session for this instance's replies
        command_id = first.request(meters[0], "disconnect", requested_by="engine", reason="")
        [outbound] = first.claim_due(instance=instance)
        # Published as the dispatcher would, then the dispatcher is gone: the meter's reply
        # waits in the broker.
        properties = Properties(PacketTypes.PUBLISH)
        properties.ResponseTopic = dispatcher.reply_topic
        properties.CorrelationData = outbound.message.wire_id.encode()
        command = Command(
            id=outbound.message.wire_id,
            name=outbound.message.name,
            expires_at=outbound.message.expires_at,
        )
        topic = TopicScheme(topic_prefix).meter_topic(outbound.comm_id, MeterChannel.COMMAND)
        async with aiomqtt.Client(
            mqtt5_broker.host, mqtt5_broker.port, protocol=aiomqtt.ProtocolVersion.V5
        ) as client:
            await client.publish(topic, command.to_bytes(), qos=1, properties=properties)
        while fleet.models[_serial(fleet, 0)].relay_closed:
            await asyncio.sleep(0.02)

        second = CommandQueue(session_factory, audit=AuditLog(), policy=slow)
        async with running(dispatcher_for(second, mqtt5_broker, topic_prefix, instance)):
            status = await _final(second, command_id)
    assert (status.state, status.confirmation) == (CommandState.CONFIRMED, Confirmation.READBACK)
    assert status.attempts == 1  # the kept reply was used: nothing was re-sent


async def test_mqtt_311_meters_are_answered_through_reply_to(
    session_factory: sessionmaker[Session], mqtt_broker: BrokerEndpoint, topic_prefix: str
) -> None:
    queue = _queue(session_factory)
    async with _fleet(mqtt_broker, topic_prefix, session_factory, count=1, mqtt_v5=False) as (
        fleet,
        meters,
    ):
        dispatcher = dispatcher_for(queue, mqtt_broker, topic_prefix, _instance(), mqtt_v5=False)
        async with running(dispatcher):
            command_id = queue.request(meters[0], "disconnect", requested_by="tech", reason="")
            status = await _final(queue, command_id)
        assert fleet.models[_serial(fleet, 0)].relay_closed is False
    assert status.state == CommandState.CONFIRMED


async def test_reply_with_an_unknown_correlation_id_is_recorded_and_changes_nothing(
    session_factory: sessionmaker[Session], mqtt_broker: BrokerEndpoint, topic_prefix: str
) -> None:
    queue = _queue(session_factory)
    async with _fleet(mqtt_broker, topic_prefix, session_factory, count=1) as (fleet, meters):
        dispatcher = dispatcher_for(queue, mqtt_broker, topic_prefix, _instance())
        async with running(dispatcher):
            command_id = queue.request(meters[0], "disconnect", requested_by="tech", reason="")
            confirmed = await _final(queue, command_id)
            stray = (
                b'{"v":1,"id":"feedfacefeedface","meter_id":"%s","status":"ok",'
                b'"result":{"relay_closed":true}}' % _serial(fleet, 0).encode()
            )
            async with aiomqtt.Client(mqtt_broker.host, mqtt_broker.port) as client:
                await client.publish(dispatcher.reply_topic, stray, qos=1)
            while not await asyncio.to_thread(rejected_reasons, session_factory):
                await asyncio.sleep(0.02)
        assert fleet.models[_serial(fleet, 0)].relay_closed is False
    [reason] = rejected_reasons(session_factory)
    assert reason == "unknown_correlation_id: no command has correlation id 'feedfacefeedface'"
    assert queue.status(command_id) == confirmed
    known = queue.known_control_state(meters[0])
    assert known is not None and known.relay_closed is False


async def test_lost_replies_are_retried_until_every_disconnect_is_confirmed(
    session_factory: sessionmaker[Session], mqtt_broker: BrokerEndpoint, topic_prefix: str
) -> None:
    queue = CommandQueue(
        session_factory,
        audit=AuditLog(),
        policy=RetryPolicy(
            reply_timeout=timedelta(milliseconds=500),
            max_attempts=8,
            max_readbacks=8,
            backoff_initial=timedelta(milliseconds=50),
            backoff_max=timedelta(milliseconds=200),
            jitter=0,
        ),
        rng=random.Random(3),
    )
    faults = FaultConfig(drop_rate=0.3)
    async with _fleet(mqtt_broker, topic_prefix, session_factory, count=6, faults=faults) as (
        fleet,
        meters,
    ):
        async with running(dispatcher_for(queue, mqtt_broker, topic_prefix, _instance())):
            ids = [queue.request(m, "disconnect", requested_by="engine", reason="") for m in meters]
            statuses = [await _final(queue, i) for i in ids]
        assert all(not model.relay_closed for model in fleet.models.values())
    assert {s.state for s in statuses} == {CommandState.CONFIRMED}
    assert sum(s.attempts + s.readbacks for s in statuses) > 2 * len(meters)  # some were lost


async def test_two_dispatchers_on_one_database_share_the_work_without_doubles(
    session_factory: sessionmaker[Session], mqtt_broker: BrokerEndpoint, topic_prefix: str
) -> None:
    first, second = _queue(session_factory), _queue(session_factory)
    async with (
        _fleet(mqtt_broker, topic_prefix, session_factory, count=6) as (fleet, meters),
        running(dispatcher_for(first, mqtt_broker, topic_prefix, _instance())) as one,
        running(dispatcher_for(second, mqtt_broker, topic_prefix, _instance())) as two,
    ):
        ids = [
            queue.request(meter, name, requested_by="engine", reason="")
            for name in ("disconnect", "connect")
            for meter, queue in zip(meters, [first, second] * 3, strict=True)
        ]
        statuses = [await _final(first, i) for i in ids]
        assert all(model.relay_closed for model in fleet.models.values())
    assert {s.state for s in statuses} == {CommandState.CONFIRMED}
    assert {(s.attempts, s.readbacks) for s in statuses} == {(1, 1)}  # nothing sent twice
    assert one.published + two.published == 2 * len(ids)


async def test_dispatcher_reconnects_after_the_broker_restarts_and_sends_what_waited(
    session_factory: sessionmaker[Session], topic_prefix: str
) -> None:
    port = free_port()
    queue = _queue(session_factory)
    with own_mosquitto(port) as broker:
        dispatcher = dispatcher_for(queue, broker, topic_prefix, _instance())
        async with running(dispatcher):
            pass  # connected once; then the broker goes away
    configs = describe_fleet(1, seed=8)
    meter = add_meter(session_factory, configs[0].serial)
    task = asyncio.create_task(dispatcher.run())
    try:
        command_id = queue.request(meter, "disconnect", requested_by="engine", reason="")
        await asyncio.sleep(0.2)  # the dispatcher is failing to connect meanwhile
        assert not dispatcher.connected.is_set()
        with own_mosquitto(port) as broker:
            async with MqttFleet(
                broker.host, broker.port, configs, topic_prefix=topic_prefix, speed=1.0
            ) as fleet:
                status = await _final(queue, command_id)
                assert fleet.models[configs[0].serial].relay_closed is False
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert status.state == CommandState.CONFIRMED
