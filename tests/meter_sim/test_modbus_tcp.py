"""The Modbus simulator driven over Modbus TCP on a loopback port, with pymodbus clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from pymodbus import FramerType
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException

from meter_sim.faults import FaultConfig
from meter_sim.modbus_server import ModbusMeter, ModbusSimServer, serve_modbus_tcp
from meter_sim.model import MeterModel, PrepaidMode
from protocols.modbus import (
    Block,
    Measurand,
    Prepaid,
    ProfileError,
    ReadRequest,
    RelayReason,
    TokenResult,
    decode_event_log,
    decode_points,
    decode_readings,
    get_profile,
    meter_totals,
    plan_reads,
    power_limit_write,
    relay_write,
    token_write,
)
from protocols.mqtt import EventKind
from protocols.quantities import Quantity
from tests.meter_sim.modbus_helpers import (
    START,
    ManualClock,
    make_meter,
    read,
    read_all,
    state_of,
    write,
)

EASTRON = get_profile("eastron-sdm120-prepaid")
SDM630 = get_profile("eastron-sdm630-prepaid")
DDS238 = get_profile("dds238-zn")
PLAIN_SDM120 = get_profile("eastron-sdm120")


class Rig:
    def __init__(self, sim: ModbusSimServer, client: AsyncModbusTcpClient, clock: ManualClock):
        self.sim = sim
        self.client = client
        self.clock = clock


async def _rig(meters: list, clock: ManualClock, **kwargs) -> AsyncIterator[Rig]:
    async with serve_modbus_tcp(meters, now=clock, port=0, **kwargs) as sim:
        assert sim.address is not None
        client = AsyncModbusTcpClient("127.0.0.1", port=sim.address[1], timeout=0.5, retries=0)
        assert await client.connect()
        try:
            yield Rig(sim, client, clock)
        finally:
            client.close()


@pytest.fixture
async def gateway() -> AsyncIterator[Rig]:
    """Four meters behind one TCP port: Eastron prepaid (1), SDM630 (2), DDS238 (3) and a
    plain SDM120 without relay or prepaid block (4)."""
    clock = ManualClock()
    meters = [
        ModbusMeter(1, make_meter(1, clock=clock), EASTRON),
        ModbusMeter(2, make_meter(2, phases=3, clock=clock), SDM630),
        ModbusMeter(3, make_meter(3, mode=PrepaidMode.CENTRAL, clock=clock), DDS238),
        ModbusMeter(4, make_meter(4, mode=PrepaidMode.CENTRAL, clock=clock), PLAIN_SDM120),
    ]
    async for rig in _rig(meters, clock):
        yield rig


def _close_to(actual: Decimal, expected: Decimal) -> bool:
    # float32 carries about 7 significant digits.
    return abs(actual - expected) <= abs(expected) * Decimal("1e-6") + Decimal("0.0015")


@pytest.mark.parametrize(("unit", "exact"), [(1, False), (2, False), (3, True), (4, False)])
async def test_each_profile_serves_the_model_measurements(gateway: Rig, unit: int, exact: bool):
    gateway.clock.forward(hours=2)
    profile = (EASTRON, SDM630, DDS238, PLAIN_SDM120)[unit - 1]
    totals = meter_totals(decode_readings(profile, await read_all(gateway.client, profile, unit)))
    model = gateway.sim.model(unit)
    expected = model.measurements()
    assert model.now == gateway.clock()
    assert expected[Quantity.ENERGY_IMPORT_KWH] > 0
    expected.setdefault(Quantity.CREDIT_KWH, Decimal(0))  # central mode: no credit, reads 0
    for quantity, value in totals.items():
        if exact:
            codec = profile.register(Measurand(quantity)).codec
            assert value == codec.decode(codec.encode(expected[quantity])), quantity
        else:
            assert _close_to(value, expected[quantity]), quantity


async def test_three_phase_profile_serves_each_phase(gateway: Rig):
    gateway.clock.forward(minutes=30)
    readings = decode_readings(SDM630, await read_all(gateway.client, SDM630, 2))
    phases = gateway.sim.model(2).phase_values()
    for i, phase in enumerate(phases, start=1):
        assert _close_to(readings[Measurand(Quantity.VOLTAGE_V, i)], phase.voltage_v)
        assert _close_to(readings[Measurand(Quantity.ACTIVE_POWER_W, i)], phase.active_power_w)


async def test_energy_register_follows_the_simulated_clock(gateway: Rig):
    points = [Measurand(Quantity.ENERGY_IMPORT_KWH)]
    first = decode_readings(EASTRON, await read_all(gateway.client, EASTRON, 1, points))
    gateway.clock.forward(hours=6)
    later = decode_readings(EASTRON, await read_all(gateway.client, EASTRON, 1, points))
    assert later[points[0]] > first[points[0]]


async def test_identity_registers_carry_serial_and_sts_meter_number(gateway: Rig):
    replies = await read_all(
        gateway.client,
        EASTRON,
        1,
        [Prepaid.METER_NUMBER, Prepaid.METER_SERIAL, Prepaid.SERIAL_NUMBER, Prepaid.DEVICE_ADDRESS],
    )
    values = {}
    for request, data in replies:
        values.update(decode_points(EASTRON, request, data))
    config = gateway.sim.model(1).config
    assert values[Prepaid.METER_NUMBER] == config.meter_number
    assert values[Prepaid.METER_SERIAL] == config.serial
    assert values[Prepaid.SERIAL_NUMBER] == 1
    assert values[Prepaid.DEVICE_ADDRESS] == 1


async def _prepaid_points(rig: Rig, profile, unit: int) -> dict:
    values: dict = {}
    for request, data in await read_all(rig.client, profile, unit):
        values.update(decode_points(profile, request, data))
    return values


async def test_coil_relay_opens_and_closes_the_eastron_meter(gateway: Rig):
    reply = await write(gateway.client, relay_write(EASTRON, False), 1)
    assert not reply.isError()
    model = gateway.sim.model(1)
    assert not model.relay_closed
    values = await _prepaid_points(gateway, EASTRON, 1)
    assert values[Prepaid.RELAY_COMMAND] == 0
    assert values[Prepaid.RELAY_CLOSED] == 0
    assert values[Prepaid.RELAY_REASON] == RelayReason.REMOTE
    assert not (await write(gateway.client, relay_write(EASTRON, True), 1)).isError()
    assert model.relay_closed


async def test_holding_register_relay_of_dds238_switches_with_fc16(gateway: Rig):
    assert not (await write(gateway.client, relay_write(DDS238, False), 3)).isError()
    assert not gateway.sim.model(3).relay_closed
    reply = await gateway.client.read_holding_registers(0x001A, count=1, device_id=3)
    assert reply.registers == [0]


async def test_dds238_answers_fc06_with_illegal_function_and_keeps_the_relay(gateway: Rig):
    before = state_of(gateway.sim.model(3))
    reply = await gateway.client.write_register(0x001A, 0, device_id=3)
    assert reply.isError() and reply.exception_code == 1
    assert state_of(gateway.sim.model(3)) == before


async def test_closing_the_relay_without_credit_is_refused_with_device_failure():
    clock = ManualClock()
    async for rig in _rig([make_meter(1, credit_kwh="0", clock=clock)], clock):
        model = rig.sim.model(1)
        before = state_of(model)
        assert not model.relay_closed
        reply = await write(rig.client, relay_write(EASTRON, True), 1)
        assert reply.isError() and reply.exception_code == 4
        assert state_of(model) == before


async def test_power_limit_write_reaches_the_model_and_reads_back(gateway: Rig):
    reply = await write(gateway.client, power_limit_write(EASTRON, Decimal(4500)), 1)
    assert not reply.isError()
    assert gateway.sim.model(1).power_limit_w == 4500
    values = await _prepaid_points(gateway, EASTRON, 1)
    assert values[Prepaid.POWER_LIMIT_W] == 4500
    assert not (await write(gateway.client, power_limit_write(DDS238, Decimal(0)), 3)).isError()
    assert gateway.sim.model(3).power_limit_w is None


async def test_typed_token_reaches_the_model_and_updates_the_result_register(gateway: Rig):
    model = gateway.sim.model(1)
    tokens_before = len(model.token_results)
    reply = await write(gateway.client, token_write(EASTRON, "12345678901234567890"), 1)
    assert not reply.isError()
    assert len(model.token_results) == tokens_before + 1
    status = model.token_results[-1].status
    # The digits arrived intact: a twin meter given them directly answers the same.
    twin = MeterModel(model.config, START)
    assert twin.enter_token("12345678901234567890", model.now) == model.token_results[-1]
    values = await _prepaid_points(gateway, EASTRON, 1)
    assert values[Prepaid.TOKEN_COUNT] == 1
    assert values[Prepaid.TOKEN_RESULT] == TokenResult[status.name]
    assert values[Prepaid.EVENT_COUNT] == model.event_count
    log = EASTRON.event_log
    request = ReadRequest(Block.HOLDING, log.address, log.count)
    reply = await read(gateway.client, request, 1)
    events = decode_event_log(EASTRON, request, reply.registers)
    assert events[0].seq == model.event_count
    assert events[0].kind in (EventKind.TOKEN_ACCEPTED, EventKind.TOKEN_REJECTED)
    assert events[0].detail == TokenResult[status.name]
    assert events[-1].kind is EventKind.POWER_UP


def _regs(text: str) -> list[int]:
    data = text.encode("ascii").ljust(20, b"\0")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, 20, 2)]


@pytest.mark.parametrize(
    ("unit", "address", "values", "code"),
    [
        (1, 0x1010, _regs("1234567890123456789X"), 3),  # not digits
        (1, 0x1010, _regs("1234"), 3),  # too short
        (1, 0x1010, _regs("12345678901234567890")[:5], 2),  # half a token
        (1, 0x1006, [0x4248, 0], 2),  # credit is read-only
        (1, 0x1008, [0x7FC0, 0], 3),  # power limit NaN
        (1, 0x1008, [0x3FC0, 0], 3),  # power limit 1.5 W
        (1, 0x1008, [0x4B18, 0x9681], 3),  # power limit 10,000,001 W
        (1, 0x1008, [0x459C, 0x4000, 0, 0], 2),  # spans two values
        (1, 0x2000, [1], 2),  # nothing there
        (3, 0x001A, [2], 3),  # relay must be 0 or 1
        (3, 0x000C, [2300], 2),  # voltage is read-only
    ],
)
async def test_malformed_writes_get_exceptions_and_change_nothing(
    gateway: Rig, unit: int, address: int, values: list[int], code: int
):
    model: MeterModel = gateway.sim.model(unit)
    before = state_of(model)
    reply = await gateway.client.write_registers(address, values, device_id=unit)
    assert reply.isError()
    assert reply.exception_code == code
    assert state_of(model) == before


async def test_malformed_coil_writes_get_exceptions(gateway: Rig):
    before = state_of(gateway.sim.model(1))
    reply = await gateway.client.write_coil(7, False, device_id=1)
    assert reply.isError() and reply.exception_code == 2
    reply = await gateway.client.write_coils(0, [False, False], device_id=1)
    assert reply.isError()
    assert state_of(gateway.sim.model(1)) == before


async def test_reads_beyond_the_eastron_request_limit_get_illegal_value(gateway: Rig):
    reply = await gateway.client.read_input_registers(0, count=61, device_id=1)
    assert reply.isError() and reply.exception_code == 3
    reply = await gateway.client.read_input_registers(0, count=60, device_id=1)
    assert not reply.isError()


async def test_unused_eastron_addresses_inside_the_map_read_as_zero(gateway: Rig):
    # Apparent power (0x0012) is not simulated, but a real SDM120 answers it.
    reply = await gateway.client.read_input_registers(0x0012, count=2, device_id=1)
    assert reply.registers == [0, 0]
    reply = await gateway.client.read_input_registers(0x0200, count=2, device_id=1)
    assert reply.isError() and reply.exception_code == 2


async def test_unknown_unit_id_stays_silent_and_the_bus_keeps_working(gateway: Rig):
    with pytest.raises(ModbusIOException):
        await gateway.client.read_input_registers(0, count=2, device_id=9)
    reply = await gateway.client.read_input_registers(0, count=2, device_id=1)
    assert not reply.isError()
    assert (gateway.sim.dropped_requests, gateway.sim.requests) == (1, 1)


async def test_offline_meter_stops_answering_until_it_comes_back(gateway: Rig):
    gateway.sim.set_offline(2)
    with pytest.raises(ModbusIOException):
        await gateway.client.read_input_registers(0, count=2, device_id=2)
    gateway.sim.set_offline(2, False)
    assert not (await gateway.client.read_input_registers(0, count=2, device_id=2)).isError()


async def test_exception_fault_answers_with_the_configured_code():
    clock = ManualClock()
    faults = FaultConfig(modbus_exception_rate=1.0, modbus_exception_code=6)
    async for rig in _rig([make_meter(1, faults=faults, clock=clock)], clock):
        reply = await rig.client.read_input_registers(0, count=2, device_id=1)
        assert reply.isError() and reply.exception_code == 6


async def test_exception_fault_hits_the_configured_fraction_deterministically():
    async def pattern() -> list[bool]:
        clock = ManualClock()
        faults = FaultConfig(modbus_exception_rate=0.5)
        async for rig in _rig([make_meter(1, faults=faults, clock=clock)], clock, seed=7):
            return [
                (await rig.client.read_input_registers(0, count=2, device_id=1)).isError()
                for _ in range(40)
            ]
        raise AssertionError("no rig")

    first = await pattern()
    assert 5 < sum(first) < 35
    assert await pattern() == first


async def test_latency_fault_makes_a_short_timeout_master_give_up():
    clock = ManualClock()
    faults = FaultConfig(latency_s=1.0)
    async for rig in _rig([make_meter(1, faults=faults, clock=clock)], clock):
        with pytest.raises(ModbusIOException):
            await rig.client.read_input_registers(0, count=2, device_id=1)


async def test_dropped_reply_fault_executes_the_write_but_sends_nothing():
    clock = ManualClock()
    faults = FaultConfig(drop_rate=1.0)
    async for rig in _rig([make_meter(1, faults=faults, clock=clock)], clock):
        with pytest.raises(ModbusIOException):
            await write(rig.client, relay_write(EASTRON, False), 1)
        assert not rig.sim.model(1).relay_closed
        assert rig.sim.dropped_replies == 1


def test_plans_for_every_profile_fit_the_served_map() -> None:
    # The simulator and the head-end share one map: each planned read is a valid request.
    for profile in (EASTRON, SDM630, DDS238):
        assert plan_reads(profile)


async def test_a_generic_modbus_client_reads_eastron_floats_like_a_real_sdm120(gateway: Rig):
    # Decode with pymodbus's own converter, not gridvend's codec: what a third-party tool does.
    gateway.clock.forward(hours=3)
    client = gateway.client
    reply = await client.read_input_registers(0x0048, count=2, device_id=1)
    energy = client.convert_from_registers(reply.registers, client.DATATYPE.FLOAT32)
    expected = gateway.sim.model(1).measurements()[Quantity.ENERGY_IMPORT_KWH]
    assert _close_to(Decimal(str(energy)), expected)
    reply = await client.read_holding_registers(0xFC00, count=2, device_id=1)
    assert client.convert_from_registers(reply.registers, client.DATATYPE.UINT32) == 1


async def test_three_phase_models_get_the_three_phase_eastron_map_by_default():
    clock = ManualClock()
    models = [make_meter(1, clock=clock), make_meter(2, phases=3, clock=clock)]
    async for rig in _rig(models, clock, profile="eastron-sdm120-prepaid"):
        clock.forward(hours=1)
        readings = decode_readings(SDM630, await read_all(rig.client, SDM630, 2))
        assert Measurand(Quantity.VOLTAGE_V, 3) in readings
        # Unit 1 stays single-phase: its 0x002A (SDM630 average voltage) is an unused zero.
        reply = await rig.client.read_input_registers(0x002A, count=2, device_id=1)
        assert reply.registers == [0, 0]


async def _routine(rig: Rig, profile, unit: int) -> dict:
    from protocols.modbus import routine_points

    values: dict = {}
    for request, data in await read_all(rig.client, profile, unit, routine_points(profile)):
        values.update(decode_points(profile, request, data))
    return values


async def test_running_out_of_credit_shows_as_open_relay_and_events_over_modbus():
    clock = ManualClock()
    async for rig in _rig([make_meter(1, credit_kwh="0.5", clock=clock)], clock):
        clock.forward(days=2)
        values = await _routine(rig, EASTRON, 1)
        assert values[Prepaid.RELAY_CLOSED] == 0
        assert values[Prepaid.RELAY_REASON] == RelayReason.CREDIT_EXHAUSTED
        assert values[Measurand(Quantity.CREDIT_KWH)] == 0
        assert values[Measurand(Quantity.ACTIVE_POWER_W)] == 0
        log = EASTRON.event_log
        request = ReadRequest(Block.HOLDING, log.address, log.count)
        events = decode_event_log(EASTRON, request, (await read(rig.client, request, 1)).registers)
        kinds = [e.kind for e in events]
        assert kinds[:2] == [EventKind.RELAY_CHANGED, EventKind.CREDIT_EXHAUSTED]
        assert events[0].detail == 0  # relay opened


async def test_power_limit_set_over_modbus_trips_the_relay(gateway: Rig):
    assert not (await write(gateway.client, power_limit_write(DDS238, Decimal(1)), 3)).isError()
    gateway.clock.forward(minutes=5)
    values = await _routine(gateway, DDS238, 3)
    assert values[Prepaid.RELAY_CLOSED] == 0
    assert values[Prepaid.RELAY_REASON] == RelayReason.POWER_LIMIT
    assert values[Prepaid.POWER_LIMIT_W] == 1


async def test_rtu_framing_over_tcp_serves_a_transparent_gateway():
    clock = ManualClock()
    faults = FaultConfig(corrupt_frame_rate=1.0)
    meters = [make_meter(1, clock=clock), make_meter(2, clock=clock, faults=faults)]
    async with serve_modbus_tcp(meters, now=clock, port=0, framer=FramerType.RTU) as sim:
        assert sim.address is not None
        client = AsyncModbusTcpClient(
            "127.0.0.1", port=sim.address[1], framer=FramerType.RTU, timeout=0.5, retries=0
        )
        await client.connect()
        try:
            assert not (await client.read_input_registers(0, count=2, device_id=1)).isError()
            with pytest.raises(ModbusIOException):
                await client.read_input_registers(0, count=2, device_id=2)
            assert sim.corrupted_replies == 1
        finally:
            client.close()


@pytest.mark.parametrize("address", [0x001A, 0x0000, 0x7000])
async def test_fc06_is_refused_as_a_function_whatever_the_address(gateway: Rig, address: int):
    reply = await gateway.client.write_register(address, 1, device_id=3)
    assert reply.isError() and reply.exception_code == 1


async def test_read_write_multiple_is_not_implemented(gateway: Rig):
    reply = await gateway.client.readwrite_registers(
        read_address=0x1000, read_count=2, write_address=0x1008, values=[0, 0], device_id=1
    )
    assert reply.isError() and reply.exception_code == 1


async def test_random_register_writes_never_crash_and_refused_ones_change_nothing(gateway: Rig):
    import random

    rng = random.Random(20261124)
    refused = 0
    for _ in range(150):
        unit, base = rng.choice([(1, 0x1000), (3, 0x0100), (3, 0x0000)])
        address = base + rng.randrange(0, 0x40)
        values = [
            rng.choice([0, 1, 0x3031, 0x4142, 0xFFFF, rng.randrange(0x10000)])
            for _ in range(rng.randint(1, 12))
        ]
        model = gateway.sim.model(unit)
        before = state_of(model)
        reply = await gateway.client.write_registers(address, values, device_id=unit)
        if reply.isError():
            refused += 1
            assert reply.exception_code in (1, 2, 3, 4)
            assert state_of(model) == before, (unit, hex(address), values)
    assert refused > 100
    # The meters still answer normally afterwards.
    for unit in (1, 3):
        assert not (
            await gateway.client.read_holding_registers(
                0x0100 if unit == 3 else 0x1000, count=2, device_id=unit
            )
        ).isError()


async def test_a_port_in_use_is_a_clear_os_error(gateway: Rig):
    assert gateway.sim.address is not None
    with pytest.raises(OSError, match="cannot listen"):
        async with serve_modbus_tcp(
            [make_meter(9)], now=gateway.clock, port=gateway.sim.address[1]
        ):
            pass


def test_duplicate_unit_ids_are_refused() -> None:
    from meter_sim.modbus_server import ModbusSimServer

    meters = [ModbusMeter(1, make_meter(1), EASTRON), ModbusMeter(1, make_meter(2), EASTRON)]
    with pytest.raises(ValueError, match="used twice"):
        ModbusSimServer(meters, ManualClock(), framer=FramerType.SOCKET)
    with pytest.raises(ValueError, match=r"1\.\.247"):
        ModbusMeter(248, make_meter(1), EASTRON)


async def test_offline_fault_takes_the_meter_off_the_bus_for_whole_intervals():
    clock = ManualClock()
    faults = FaultConfig(offline_rate=0.5, offline_intervals=2)
    meters = [make_meter(1, faults=faults, clock=clock), make_meter(2, clock=clock)]
    async for rig in _rig(meters, clock, seed=3):
        history = []
        for _ in range(40):
            history.append(rig.sim.is_offline(1))
            clock.forward(minutes=15)
        assert any(history) and not all(history)
        # Once off, a meter stays off for offline_intervals (2) intervals at least.
        runs = "".join("x" if h else "." for h in history).split(".")
        complete_runs = [run for run in runs[:-1] if run]  # the last one may be cut short
        assert complete_runs
        assert all(len(run) >= 2 for run in complete_runs)
        assert not rig.sim.is_offline(2)
        # Over the wire: silent while offline, answering once back.
        while not rig.sim.is_offline(1):
            clock.forward(minutes=15)
        with pytest.raises(ModbusIOException):
            await rig.client.read_input_registers(0, count=2, device_id=1)
        while rig.sim.is_offline(1):
            clock.forward(minutes=15)
        assert not (await rig.client.read_input_registers(0, count=2, device_id=1)).isError()


async def test_a_meter_without_relay_or_prepaid_block_refuses_those_addresses(gateway: Rig):
    with pytest.raises(ProfileError):
        relay_write(PLAIN_SDM120, False)
    reply = await gateway.client.write_coil(0, False, device_id=4)
    assert reply.isError() and reply.exception_code == 2
    reply = await gateway.client.read_holding_registers(0x1000, count=2, device_id=4)
    assert reply.isError() and reply.exception_code == 2
    assert gateway.sim.model(4).relay_closed


async def test_meter_clock_reads_and_is_set_over_modbus(gateway: Rig):
    from datetime import UTC, datetime

    from protocols.modbus import clock_write, meter_time

    values = await _routine(gateway, EASTRON, 1)
    assert meter_time(values[Prepaid.METER_TIME]) == gateway.clock().replace(microsecond=0)
    target = datetime(2026, 11, 24, 9, 30, tzinfo=UTC)
    assert not (await write(gateway.client, clock_write(DDS238, target), 3)).isError()
    assert gateway.sim.model(3).meter_time == target
    values = await _routine(gateway, DDS238, 3)
    assert meter_time(values[Prepaid.METER_TIME]) == target


async def test_a_meter_time_outside_the_meter_range_is_refused(gateway: Rig):
    before = state_of(gateway.sim.model(1))
    reply = await gateway.client.write_registers(0x100C, [0x0000, 0x0001], device_id=1)  # 1970
    assert reply.isError() and reply.exception_code == 3
    assert state_of(gateway.sim.model(1)) == before
