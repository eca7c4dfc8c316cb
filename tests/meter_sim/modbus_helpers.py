"""Small factories shared by the Modbus simulator tests (real transports, no mocks)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from pymodbus.client.mixin import ModbusClientMixin
from pymodbus.pdu import ModbusPDU

from meter_sim.faults import FaultConfig
from meter_sim.model import MeterConfig, MeterModel, PrepaidMode
from protocols.modbus import Profile, ReadRequest, WriteRequest, plan_reads

START = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)


class ManualClock:
    """Simulated time that moves only when a test says so."""

    def __init__(self, start: datetime = START) -> None:
        self.current = start

    def __call__(self) -> datetime:
        return self.current

    def forward(self, **delta: float) -> None:
        self.current += timedelta(**delta)


def make_meter(
    index: int = 1,
    *,
    phases: int = 1,
    credit_kwh: str = "50",
    mode: PrepaidMode = PrepaidMode.TOKEN,
    faults: FaultConfig | None = None,
    power_limit_w: int | None = None,
    clock: ManualClock | None = None,
) -> MeterModel:
    config = MeterConfig(
        serial=f"SIM-{index:06d}",
        meter_number=f"600727{index:011d}0",
        phases=phases,
        prepaid_mode=mode,
        seed=index,
        initial_credit_kwh=Decimal(credit_kwh),
        power_limit_w=power_limit_w,
        faults=faults or FaultConfig(),
    )
    return MeterModel(config, (clock or ManualClock())())


@dataclass
class State:
    """What a malformed write must not change."""

    relay_closed: bool
    power_limit_w: int | None
    tokens: int
    events: int
    credit_kwh: Decimal | None
    meter_time: datetime


def state_of(model: MeterModel) -> State:
    return State(
        model.relay_closed,
        model.power_limit_w,
        len(model.token_results),
        model.event_count,
        model.credit_kwh,
        model.meter_time,
    )


async def read(client: ModbusClientMixin, request: ReadRequest, unit: int) -> ModbusPDU:
    fc = request.function_code
    if fc == 1:
        return await client.read_coils(request.address, count=request.count, device_id=unit)
    if fc == 3:
        return await client.read_holding_registers(
            request.address, count=request.count, device_id=unit
        )
    return await client.read_input_registers(request.address, count=request.count, device_id=unit)


async def read_all(
    client: ModbusClientMixin, profile: Profile, unit: int, points: Sequence | None = None
) -> list[tuple[ReadRequest, list]]:
    replies = []
    for request in plan_reads(profile, points):
        reply = await read(client, request, unit)
        assert not reply.isError(), reply
        data = reply.bits if request.block.is_bits else reply.registers
        replies.append((request, data))
    return replies


async def write(client: ModbusClientMixin, request: WriteRequest, unit: int) -> ModbusPDU:
    if request.function_code == 5:
        return await client.write_coil(request.address, request.bits[0], device_id=unit)
    return await client.write_registers(request.address, list(request.registers), device_id=unit)
