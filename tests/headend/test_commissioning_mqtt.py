"""Commissioning MQTT meters: the workflow's steps as head-end commands, through the
command queue and its dispatcher, a real broker and simulated meters (meter_sim)."""

from __future__ import annotations

import socket
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from gridvend.app import create_app
from gridvend.audit import AuditLog
from gridvend.broker import BrokerEndpoint
from headend.commands import CommandQueue
from headend.commands.models import MeterCommand
from headend.commissioning import Commissioning, MeterAddress, RunStatus, Step, StepStatus
from headend.meter_link import MeterLinkError
from headend.meter_link_mqtt import MqttMeterLink, commissioning_link_factory
from headend.models import Meter, Reading
from headend.registry import MeterRegistration, register_meter
from meter_sim import MqttFleet, describe_fleet
from meter_sim.model import MeterConfig
from tests.conftest import bearer_headers, make_security_module
from tests.headend.commands_support import LIVE_POLICY, dispatcher_for, running
from tests.headend.test_commissioning_keys import StsKeyLoader


def register(session_factory: sessionmaker[Session], config: MeterConfig, **overrides: Any) -> int:
    """An installed MQTT meter as the registry stores it (comm id = serial)."""
    fields: dict[str, Any] = {
        "serial": config.serial,
        "meter_number": config.drn,
        "phases": config.phases,
        "protocol": "mqtt",
        "prepaid_mode": config.prepaid_mode.value,
        "lifecycle": "installed",
        **overrides,
    }
    with session_factory() as session, session.begin():
        return register_meter(session, MeterRegistration(**fields), actor="tech").id


def lifecycle(session_factory: sessionmaker[Session], meter_id: int) -> str:
    with session_factory() as session:
        meter = session.get(Meter, meter_id)
        assert meter is not None
        return meter.lifecycle


def fleet(broker: BrokerEndpoint, prefix: str, configs: list[MeterConfig]) -> MqttFleet:
    return MqttFleet(
        broker.host,
        broker.port,
        configs,
        topic_prefix=prefix,
        speed=1.0,
        mqtt_v5=broker.supports_v5,
    )


def instance() -> str:
    return f"he-{uuid.uuid4().hex[:8]}"


async def test_an_mqtt_meter_is_commissioned_over_rest_through_the_command_queue(
    session_factory: sessionmaker[Session], mqtt_broker: BrokerEndpoint, topic_prefix: str
) -> None:
    (config,) = describe_fleet(1, seed=31)
    assert config.initial_credit_kwh > 0  # a token meter without credit refuses connect
    meter_id = register(session_factory, config)
    queue = CommandQueue(session_factory, audit=AuditLog(), policy=LIVE_POLICY)
    dispatcher = dispatcher_for(queue, mqtt_broker, topic_prefix, instance())
    app = create_app(
        session_factory,
        security_module=make_security_module(session_factory),
        command_queue=queue,
    )
    headers = bearer_headers(session_factory, "technician")
    async with (
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gridvend", headers=headers
        ) as api,
        running(dispatcher),
        fleet(mqtt_broker, topic_prefix, [config]) as meters,
    ):
        model = meters.models[config.serial]
        model.set_clock(datetime.now(UTC) - timedelta(minutes=7))  # the meter runs late
        response = await api.post(f"/api/meters/{meter_id}/commissioning", json={})
        assert response.status_code == 201, response.text
        run = response.json()
        assert model.relay_closed  # opened and closed again by the relay test
        meter_clock_error = abs((model.meter_time - datetime.now(UTC)).total_seconds())

    assert run["status"] == "passed", run
    steps = {s["step"]: s for s in run["steps"]}
    assert {name: s["status"] for name, s in steps.items()} == {
        "verify_communication": "passed",
        "nameplate": "passed",
        "install_reading": "passed",
        "relay_test": "passed",
        "set_clock": "passed",
        "load_keys": "pending",
        "report": "passed",
    }
    assert steps["nameplate"]["detail"]["meter"]["serial"] == config.serial
    assert steps["relay_test"]["detail"] == {
        "initially_closed": True,
        "after_open_closed": False,
        "after_close_closed": True,
    }
    assert -430 <= steps["set_clock"]["detail"]["offset_s"] <= -410
    assert meter_clock_error < 10
    assert lifecycle(session_factory, meter_id) == "commissioned"
    with session_factory() as session:
        reading = session.scalars(select(Reading).where(Reading.meter_id == meter_id)).one()
        assert (reading.quantity, reading.source) == ("energy_import_kwh", "commissioning")
        assert reading.value >= config.initial_energy_kwh.quantize(Decimal("0.001")) - 1
        commands = session.scalars(
            select(MeterCommand).where(MeterCommand.meter_id == meter_id)
        ).all()
        # Every step's command went through the queue and was confirmed there.
        assert {c.state for c in commands} == {"confirmed"}
        assert {c.name for c in commands} == {"read_now", "disconnect", "connect", "set_clock"}
        assert {c.requested_by for c in commands} == {"commissioning"}


async def test_a_meter_that_does_not_answer_fails_the_first_step_and_stays_installed(
    session_factory: sessionmaker[Session], mqtt_broker: BrokerEndpoint, topic_prefix: str
) -> None:
    silent, other = describe_fleet(2, seed=32)
    meter_id = register(session_factory, silent)
    queue = CommandQueue(session_factory, audit=AuditLog(), policy=LIVE_POLICY)
    dispatcher = dispatcher_for(queue, mqtt_broker, topic_prefix, instance())
    service = Commissioning(
        session_factory,
        audit=AuditLog(),
        link_factory=commissioning_link_factory(queue, timeout_s=1.5, poll_interval_s=0.05),
    )
    # Only the other meter is on the broker: the silent one never answers.
    async with running(dispatcher), fleet(mqtt_broker, topic_prefix, [other]):
        view = await service.commission(meter_id, technician="thabo")

    assert view.status is RunStatus.FAILED
    assert view.failed_step == "verify_communication"
    assert [(s.step.value, s.status.value) for s in view.steps] == [
        ("verify_communication", "failed")
    ]
    assert view.failure_reason.startswith(f"meter {silent.serial}: read_now (command ")
    assert "expired" in view.failure_reason
    assert lifecycle(session_factory, meter_id) == "installed"


async def test_without_a_running_dispatcher_the_link_gives_up_and_says_why(
    session_factory: sessionmaker[Session],
) -> None:
    (config,) = describe_fleet(1, seed=33)
    meter_id = register(session_factory, config)
    queue = CommandQueue(session_factory, audit=AuditLog(), policy=LIVE_POLICY)
    with session_factory() as session:
        meter = session.get(Meter, meter_id)
        assert meter is not None
        address = MeterAddress.of(meter)
    link = MqttMeterLink(queue, address, timeout_s=0.2, poll_interval_s=0.05)
    with pytest.raises(MeterLinkError, match=r"is still queued.*dispatcher running"):
        await link.read_relay()


async def test_the_factory_keeps_modbus_meters_on_the_modbus_link(
    session_factory: sessionmaker[Session],
) -> None:
    queue = CommandQueue(session_factory, audit=AuditLog())
    factory = commissioning_link_factory(queue)
    with socket.socket() as probe:  # a port nobody listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    modbus_address = MeterAddress(
        meter_id=1,
        serial="MB-1",
        comm_id="MB-1",
        protocol="modbus_tcp",
        modbus_profile="eastron-sdm120",
        modbus_host="127.0.0.1",
        modbus_port=port,
        modbus_unit=1,
    )
    with pytest.raises(MeterLinkError, match=f"cannot connect to 127.0.0.1:{port}"):
        async with factory(modbus_address):
            pass
    mqtt_address = MeterAddress(meter_id=2, serial="MQ-1", comm_id="MQ-1", protocol="mqtt")
    async with factory(mqtt_address) as link:
        assert isinstance(link, MqttMeterLink)


async def test_a_token_the_meter_refuses_is_its_answer_not_a_link_failure(
    session_factory: sessionmaker[Session], mqtt_broker: BrokerEndpoint, topic_prefix: str
) -> None:
    (config,) = describe_fleet(1, seed=34)
    meter_id = register(session_factory, config)
    queue = CommandQueue(session_factory, audit=AuditLog(), policy=LIVE_POLICY)
    dispatcher = dispatcher_for(queue, mqtt_broker, topic_prefix, instance())
    with session_factory() as session:
        meter = session.get(Meter, meter_id)
        assert meter is not None
        link = MqttMeterLink(queue, MeterAddress.of(meter), timeout_s=20, poll_interval_s=0.05)
    async with running(dispatcher), fleet(mqtt_broker, topic_prefix, [config]) as meters:
        credit_before = meters.models[config.serial].credit_kwh
        # Twenty digits that are no token for this meter's key: the CRC does not match.
        answer = await link.enter_token("1234 5678 9012 3456 7890".replace(" ", ""))
        assert meters.models[config.serial].credit_kwh <= credit_before
    assert answer == "reject"
    with session_factory() as session:
        command = session.scalars(
            select(MeterCommand).where(MeterCommand.meter_id == meter_id)
        ).one()
        assert (command.name, command.state) == ("push_token", "failed")


async def test_key_change_tokens_are_pushed_to_an_mqtt_meter_and_the_run_passes(
    session_factory: sessionmaker[Session], mqtt_broker: BrokerEndpoint, topic_prefix: str
) -> None:
    (config,) = describe_fleet(1, seed=35)
    meter_id = register(
        session_factory,
        config,
        supply_group_code="654321",
        tariff_index="01",
        key_revision=2,
    )
    queue = CommandQueue(session_factory, audit=AuditLog(), policy=LIVE_POLICY)
    dispatcher = dispatcher_for(queue, mqtt_broker, topic_prefix, instance())
    loader = StsKeyLoader()
    service = Commissioning(
        session_factory,
        audit=AuditLog(),
        link_factory=commissioning_link_factory(queue, timeout_s=20, poll_interval_s=0.05),
        key_loader=loader,
    )
    async with running(dispatcher), fleet(mqtt_broker, topic_prefix, [config]):
        view = await service.commission(meter_id, technician="thabo")

    assert view.status is RunStatus.PASSED, view.as_dict()
    (load_keys,) = [s for s in view.steps if s.step is Step.LOAD_KEYS]
    assert load_keys.status is StepStatus.PASSED
    answers = load_keys.detail["answers"]
    assert answers[-1] == "accept"
    assert set(answers[:-1]) <= {"key_change_1st"}
    assert "meter on SGC 654321 KRN 2 TI 01" in load_keys.message
