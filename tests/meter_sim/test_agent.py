"""The MQTT meter agent (sans-IO): commands in, messages out."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from meter_sim.agent import MqttMeterAgent
from meter_sim.fleet import describe_fleet
from meter_sim.model import MeterModel
from protocols.mqtt import ReplyStatus, TopicScheme, parse_reply, parse_telemetry

START = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
REPLIES = "ami/v1/headend/t/replies"


def _agent() -> MqttMeterAgent:
    agent = MqttMeterAgent(MeterModel(describe_fleet(1, seed=8)[0], START), TopicScheme())
    agent.take_events()  # the power-up event
    return agent


def _command(**fields: object) -> bytes:
    return json.dumps({"v": 1, "reply_to": REPLIES, **fields}).encode()


def test_an_expired_command_is_neither_run_nor_answered() -> None:
    agent = _agent()
    body = _command(id="e1", name="disconnect", expires_at="2026-03-02T05:59:00Z")
    assert agent.on_command(body, START, wall_now=START) == []
    assert agent.model.relay_closed
    assert agent.stats.expired_commands == 1


def test_set_clock_sets_the_meter_clock() -> None:
    agent = _agent()
    body = _command(id="c1", name="set_clock", params={"time": "2026-03-02T07:30:00+02:00"})
    [reply] = agent.on_command(body, START, wall_now=START)
    parsed = parse_reply(reply.payload)
    assert parsed.status is ReplyStatus.OK
    assert agent.model.meter_time == datetime(2026, 3, 2, 5, 30, tzinfo=UTC)


def test_a_command_without_reply_destination_runs_silently() -> None:
    agent = _agent()
    body = json.dumps({"v": 1, "id": "s1", "name": "disconnect"}).encode()
    messages = agent.on_command(body, START + timedelta(minutes=1), wall_now=START)
    assert [m.topic for m in messages] == [agent.events_topic]
    assert not agent.model.relay_closed


def test_an_invalid_command_is_answered_with_its_id_and_the_reason() -> None:
    agent = _agent()
    [reply] = agent.on_command(_command(id="x9", name="reboot"), START, wall_now=START)
    parsed = parse_reply(reply.payload)
    assert (parsed.id, parsed.status) == ("x9", ReplyStatus.ERROR)
    assert parsed.reason is not None and "name" in parsed.reason
    assert agent.stats.bad_commands == 1


def test_a_reply_to_with_wildcards_gets_no_reply() -> None:
    agent = _agent()
    body = json.dumps({"v": 1, "id": "w1", "name": "read_now", "reply_to": "a/#"}).encode()
    messages = agent.on_command(body, START, wall_now=START)
    assert [m.topic for m in messages] == [agent.telemetry_topic]


def test_a_command_after_an_interval_end_first_takes_that_interval_reading() -> None:
    agent = _agent()
    assert agent.next_reading_at == START + timedelta(minutes=15)
    late = START + timedelta(minutes=17)
    messages = agent.on_command(_command(id="late-1", name="connect"), late, wall_now=START)
    [reading] = [m for m in messages if m.topic == agent.telemetry_topic]
    assert parse_telemetry(reading.payload).ts == START + timedelta(minutes=15)
    assert agent.next_reading_at == START + timedelta(minutes=30)
    assert agent.due_readings(late) == []


def test_upload_spread_delays_publication_but_not_the_reading_time() -> None:
    model = MeterModel(describe_fleet(1, seed=8)[0], START)
    agent = MqttMeterAgent(model, TopicScheme(), upload_spread_s=600)
    assert timedelta(0) <= agent.upload_delay < timedelta(seconds=600)
    agent.take_events()
    end = START + timedelta(minutes=15)
    [reading] = agent.tick(end + timedelta(minutes=5))
    assert parse_telemetry(reading.payload).ts == end
