"""The Modbus simulator as RTU slaves on one serial line: a pty pair, pyserial underneath."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from pymodbus.client import AsyncModbusSerialClient
from pymodbus.exceptions import ModbusIOException

from meter_sim.faults import FaultConfig
from meter_sim.modbus_server import ModbusMeter, ModbusSimServer, serve_modbus_rtu
from meter_sim.model import PrepaidMode
from meter_sim.serial_bridge import serial_pair
from protocols.modbus import (
    Measurand,
    Prepaid,
    decode_points,
    decode_readings,
    get_profile,
    meter_totals,
    relay_write,
    token_write,
)
from protocols.quantities import Quantity
from tests.meter_sim.modbus_helpers import ManualClock, make_meter, read_all, state_of, write

EASTRON = get_profile("eastron-sdm120-prepaid")
DDS238 = get_profile("dds238-zn")


@dataclass
class Bus:
    sim: ModbusSimServer
    client: AsyncModbusSerialClient
    clock: ManualClock


async def _bus(meters: list[ModbusMeter], clock: ManualClock, *, socat: bool = False):
    async with (
        serial_pair(use_socat=socat) as pair,
        serve_modbus_rtu(meters, now=clock, device=pair.server_port) as sim,
    ):
        client = AsyncModbusSerialClient(pair.client_port, baudrate=9600, timeout=0.5, retries=0)
        assert await client.connect()
        try:
            yield Bus(sim, client, clock)
        finally:
            client.close()


@pytest.fixture
async def bus() -> AsyncIterator[Bus]:
    """Three meters on one RS-485 line: two Eastron (1, 2) and a DDS238 (5)."""
    clock = ManualClock()
    meters = [
        ModbusMeter(1, make_meter(1, clock=clock), EASTRON),
        ModbusMeter(2, make_meter(2, clock=clock), EASTRON),
        ModbusMeter(5, make_meter(5, mode=PrepaidMode.CENTRAL, clock=clock), DDS238),
    ]
    async for bus in _bus(meters, clock):
        yield bus


async def test_each_meter_on_the_line_answers_with_its_own_registers(bus: Bus):
    bus.clock.forward(hours=1)
    serials = {}
    for unit, profile in ((1, EASTRON), (2, EASTRON), (5, DDS238)):
        replies = await read_all(bus.client, profile, unit)
        values: dict = {}
        for request, data in replies:
            values.update(decode_points(profile, request, data))
        serials[unit] = values[Prepaid.METER_SERIAL]
        totals = meter_totals(decode_readings(profile, replies))
        assert totals[Quantity.ENERGY_IMPORT_KWH] > 0
    assert serials == {u: bus.sim.model(u).config.serial for u in (1, 2, 5)}


async def test_relay_writes_travel_over_the_serial_line_with_each_actuator(bus: Bus):
    assert not (await write(bus.client, relay_write(EASTRON, False), 2)).isError()
    assert not (await write(bus.client, relay_write(DDS238, False), 5)).isError()
    assert not bus.sim.model(2).relay_closed
    assert not bus.sim.model(5).relay_closed
    assert bus.sim.model(1).relay_closed


async def test_token_typed_over_rtu_reaches_the_meter(bus: Bus):
    before = len(bus.sim.model(1).token_results)
    assert not (await write(bus.client, token_write(EASTRON, "01234567890123456789"), 1)).isError()
    assert len(bus.sim.model(1).token_results) == before + 1


async def test_fc06_on_the_line_gets_illegal_function(bus: Bus):
    before = state_of(bus.sim.model(5))
    reply = await bus.client.write_register(0x001A, 0, device_id=5)
    assert reply.isError() and reply.exception_code == 1
    assert state_of(bus.sim.model(5)) == before


async def test_absent_unit_is_silent_and_the_line_recovers(bus: Bus):
    with pytest.raises(ModbusIOException):
        await bus.client.read_input_registers(0, count=2, device_id=3)
    assert not (await bus.client.read_input_registers(0, count=2, device_id=1)).isError()


async def test_corrupt_crc_fault_makes_the_master_discard_the_reply():
    clock = ManualClock()
    meters = [
        ModbusMeter(
            1, make_meter(1, clock=clock, faults=FaultConfig(corrupt_frame_rate=1.0)), EASTRON
        ),
        ModbusMeter(2, make_meter(2, clock=clock), EASTRON),
    ]
    async for bus in _bus(meters, clock):
        with pytest.raises(ModbusIOException):
            await bus.client.read_input_registers(0, count=2, device_id=1)
        assert bus.sim.corrupted_replies == 1
        assert not (await bus.client.read_input_registers(0, count=2, device_id=2)).isError()


async def test_the_line_also_works_through_socat():
    clock = ManualClock()
    async for bus in _bus([ModbusMeter(1, make_meter(1, clock=clock), EASTRON)], clock, socat=True):
        replies = await read_all(bus.client, EASTRON, 1, [Measurand(Quantity.VOLTAGE_V)])
        assert meter_totals(decode_readings(EASTRON, replies))[Quantity.VOLTAGE_V] > 200


async def test_a_missing_serial_port_is_a_clear_os_error(tmp_path):
    clock = ManualClock()
    with pytest.raises(OSError, match="cannot open serial port"):
        async with serve_modbus_rtu(
            [make_meter(1, clock=clock)], now=clock, device=str(tmp_path / "ttyNONE")
        ):
            pass


async def test_the_serial_line_survives_the_master_closing_and_reopening_its_port():
    clock = ManualClock()
    meters = [ModbusMeter(1, make_meter(1, clock=clock), EASTRON)]
    async with (
        serial_pair() as pair,
        serve_modbus_rtu(meters, now=clock, device=pair.server_port),
    ):
        for _ in range(2):
            client = AsyncModbusSerialClient(
                pair.client_port, baudrate=9600, timeout=0.5, retries=0
            )
            assert await client.connect()
            try:
                reply = await client.read_input_registers(0, count=2, device_id=1)
                assert not reply.isError()
            finally:
                client.close()
