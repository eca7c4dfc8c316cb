"""Commands to Modbus meters over real Modbus TCP and RTU (a pty bus) against meter_sim:
the queue's messages become register writes, the answers go through the same state
machine as MQTT replies, and the relay is confirmed from the meter's own registers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.orm import Session, sessionmaker

from gridvend.audit import AuditLog
from headend.commands import CommandQueue, CommandState
from headend.commands.modbus_worker import ModbusCommandWorker
from headend.connectors.modbus import PollTarget, TcpTransport
from headend.models import MeterProtocol
from protocols.mqtt import CommandName
from tests.headend.commands_support import LIVE_POLICY
from tests.headend.modbus_poll_fixtures import SimFleet, StepClock, register_meters, sim_fleet
from tests.headend.test_modbus_poller import make_poller


def _queue(session_factory: sessionmaker[Session]) -> CommandQueue:
    return CommandQueue(session_factory, audit=AuditLog(), policy=LIVE_POLICY)


@asynccontextmanager
async def _modbus_world(
    session_factory: sessionmaker[Session], *, gateways: tuple[int, ...], rtu_meters: int = 0
) -> AsyncIterator[tuple[SimFleet, CommandQueue, ModbusCommandWorker]]:
    """Simulated meters behind real Modbus TCP (and an RTU pty bus), a poller on them, the
    command queue and the Modbus command worker."""
    clock = StepClock()
    async with sim_fleet(
        session_factory, now=clock, gateways=gateways, rtu_meters=rtu_meters
    ) as fleet:
        poller = make_poller(session_factory, fleet.targets, clock)
        queue = _queue(session_factory)
        try:
            yield fleet, queue, ModbusCommandWorker(queue, poller, instance="test")
        finally:
            await poller.close()


async def _settle(worker: ModbusCommandWorker, queue: CommandQueue, command_id: int) -> str:
    """Run the worker until the command is final (a read-back may be due a moment later)."""
    for _ in range(50):
        await worker.run_once()
        status = queue.status(command_id)
        if status.final:
            return status.state.value
        await asyncio.sleep(0.05)
    return queue.status(command_id).state.value


async def test_a_disconnect_over_tcp_and_rtu_is_confirmed_from_the_relay_registers(
    session_factory: sessionmaker[Session],
) -> None:
    async with _modbus_world(session_factory, gateways=(2,), rtu_meters=1) as (
        fleet,
        queue,
        worker,
    ):
        for target in fleet.targets:
            command_id = queue.request(
                target.meter_id, CommandName.DISCONNECT, requested_by="op", reason="test"
            )
            assert await _settle(worker, queue, command_id) == "confirmed"
            model = fleet.server_of(target.meter_id).model(target.unit_id)
            assert not model.relay_closed
        # Connect again: confirmed the same way, and the meter's relay closes.
        first = fleet.targets[0]
        command_id = queue.request(
            first.meter_id, CommandName.CONNECT, requested_by="op", reason="paid"
        )
        assert await _settle(worker, queue, command_id) == "confirmed"
        assert fleet.server_of(first.meter_id).model(first.unit_id).relay_closed


async def test_a_power_limit_is_written_and_read_back(
    session_factory: sessionmaker[Session],
) -> None:
    async with _modbus_world(session_factory, gateways=(1,)) as (fleet, queue, worker):
        [target] = fleet.targets
        command_id = queue.request(
            target.meter_id,
            CommandName.SET_POWER_LIMIT,
            {"watts": 2300},
            requested_by="op",
            reason="load limiting",
        )
        assert await _settle(worker, queue, command_id) == "confirmed"
        assert fleet.server_of(target.meter_id).model(target.unit_id).power_limit_w == 2300
        known = queue.known_control_state(target.meter_id)
        assert known is not None and known.power_limit_w == 2300


async def test_a_token_the_meter_rejects_fails_with_the_meters_answer(
    session_factory: sessionmaker[Session],
) -> None:
    async with _modbus_world(session_factory, gateways=(1,)) as (fleet, queue, worker):
        [target] = fleet.targets
        command_id = queue.request(
            target.meter_id,
            CommandName.PUSH_TOKEN,
            {"token": "1234 5678 9012 3456 7890"},
            requested_by="clerk",
            reason="customer's token",
        )
        assert await _settle(worker, queue, command_id) == "failed"
        assert "token" in (queue.status(command_id).last_error or "")


async def test_an_unreachable_meter_gets_no_reply_and_the_command_waits_for_a_retry(
    session_factory: sessionmaker[Session],
) -> None:
    [meter_id] = register_meters(session_factory, 1, prefix="GONE", protocol="modbus_tcp")
    # A closed port: nothing answers there.
    target = PollTarget(meter_id, "eastron-sdm120-prepaid", 1, TcpTransport("127.0.0.1", 9))
    poller = make_poller(session_factory, [target], StepClock())
    queue = _queue(session_factory)
    worker = ModbusCommandWorker(queue, poller, instance="test")
    command_id = queue.request(meter_id, CommandName.DISCONNECT, requested_by="op", reason="t")
    assert await worker.run_once()
    status = queue.status(command_id)
    assert status.state is CommandState.SENT
    assert status.attempts == 1
    await poller.close()


async def test_the_mqtt_dispatcher_never_claims_a_modbus_meters_command(
    session_factory: sessionmaker[Session],
) -> None:
    [meter_id] = register_meters(session_factory, 1, prefix="MB", protocol=MeterProtocol.MODBUS_RTU)
    queue = _queue(session_factory)
    queue.request(meter_id, CommandName.DISCONNECT, requested_by="op", reason="t")
    assert queue.claim_due(instance="mqtt-dispatcher") == []
