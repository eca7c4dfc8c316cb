"""Factories for the Modbus poller tests: registered meters, simulated gateways and a
pty RS-485 bus (the real simulator over real transports)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from headend.connectors.modbus import PollTarget, RtuTransport, TcpTransport
from headend.models import Meter, MeterProtocol
from meter_sim.faults import FaultConfig
from meter_sim.modbus_server import ModbusMeter, ModbusSimServer, serve_modbus_rtu, serve_modbus_tcp
from meter_sim.model import PrepaidMode
from meter_sim.serial_bridge import serial_pair
from protocols.modbus import get_profile
from tests.meter_sim.modbus_helpers import make_meter

START = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
EASTRON = "eastron-sdm120-prepaid"
DDS238 = "dds238-zn"

Now = Callable[[], datetime]


class StepClock:
    """Poll-clock time that moves only when told (or when the scheduler sleeps)."""

    def __init__(self, start: datetime = START) -> None:
        self.current = start

    def now(self) -> datetime:
        return self.current

    def __call__(self) -> datetime:
        return self.current

    async def sleep_until(self, moment: datetime) -> None:
        self.current = max(self.current, moment)
        await asyncio.sleep(0)

    def forward(self, **delta: float) -> None:
        self.current += timedelta(**delta)


def register_meters(
    session_factory: sessionmaker[Session], count: int, *, prefix: str = "MB", protocol: str
) -> list[int]:
    """Add ``count`` meters to the registry; return their ids in order."""
    with session_factory() as session, session.begin():
        meters = [
            Meter(
                serial=f"{prefix}-{i:05d}",
                comm_id=f"{prefix}-{i:05d}",
                protocol=protocol,
                created_at=START,
            )
            for i in range(count)
        ]
        session.add_all(meters)
        session.flush()
        return [m.id for m in meters]


@dataclass
class SimFleet:
    """Gateways and buses started for a test, and the poll targets that reach them."""

    targets: list[PollTarget] = field(default_factory=list)
    servers: dict[str, ModbusSimServer] = field(default_factory=dict)
    # meter id -> (channel, unit id)
    units: dict[int, tuple[str, int]] = field(default_factory=dict)

    def server_of(self, meter_id: int) -> ModbusSimServer:
        return self.servers[self.units[meter_id][0]]


def _sim_meters(
    meter_ids: Sequence[int], now: Now, faults: FaultConfig, profiles: Sequence[str]
) -> list[ModbusMeter]:
    return [
        ModbusMeter(
            unit,
            make_meter(meter_id, mode=PrepaidMode.CENTRAL, faults=faults, clock=now),  # type: ignore[arg-type]
            get_profile(profiles[(unit - 1) % len(profiles)]),
        )
        for unit, meter_id in enumerate(meter_ids, start=1)
    ]


@asynccontextmanager
async def tcp_gateway(
    stack_fleet: SimFleet,
    meter_ids: Sequence[int],
    *,
    now: Now,
    faults: FaultConfig = FaultConfig(),
    profiles: Sequence[str] = (EASTRON, DDS238),
    seed: int = 0,
) -> AsyncIterator[ModbusSimServer]:
    """One simulated RS-485-to-TCP gateway on a free loopback port with ``meter_ids``
    behind it as unit ids 1, 2, ..."""
    meters = _sim_meters(meter_ids, now, faults, profiles)
    async with serve_modbus_tcp(meters, now=now, host="127.0.0.1", port=0, seed=seed) as sim:
        assert sim.address is not None
        transport = TcpTransport("127.0.0.1", sim.address[1])
        stack_fleet.servers[transport.channel] = sim
        for meter, meter_id in zip(meters, meter_ids, strict=True):
            stack_fleet.targets.append(
                PollTarget(meter_id, meter.profile.name, meter.unit_id, transport)
            )
            stack_fleet.units[meter_id] = (transport.channel, meter.unit_id)
        yield sim


@asynccontextmanager
async def rtu_bus(
    stack_fleet: SimFleet,
    meter_ids: Sequence[int],
    *,
    now: Now,
    faults: FaultConfig = FaultConfig(),
    profiles: Sequence[str] = (EASTRON, DDS238),
    seed: int = 0,
) -> AsyncIterator[ModbusSimServer]:
    """``meter_ids`` as RTU slaves on one virtual serial line (a pty pair)."""
    meters = _sim_meters(meter_ids, now, faults, profiles)
    async with (
        serial_pair() as pair,
        serve_modbus_rtu(meters, now=now, device=pair.server_port, seed=seed) as sim,
    ):
        transport = RtuTransport(pair.client_port, 9600)
        stack_fleet.servers[transport.channel] = sim
        for meter, meter_id in zip(meters, meter_ids, strict=True):
            stack_fleet.targets.append(
                PollTarget(meter_id, meter.profile.name, meter.unit_id, transport)
            )
            stack_fleet.units[meter_id] = (transport.channel, meter.unit_id)
        yield sim


@asynccontextmanager
async def sim_fleet(
    session_factory: sessionmaker[Session],
    *,
    now: Now,
    gateways: Sequence[int] = (),
    rtu_meters: int = 0,
    tcp_faults: FaultConfig = FaultConfig(),
    rtu_faults: FaultConfig = FaultConfig(),
    seed: int = 0,
    name: str = "",
) -> AsyncIterator[SimFleet]:
    """Registered meters behind TCP gateways (``gateways[i]`` meters on gateway i) and
    ``rtu_meters`` meters on one pty bus."""
    fleet = SimFleet()
    async with AsyncExitStack() as stack:
        for index, size in enumerate(gateways):
            ids = register_meters(
                session_factory, size, prefix=f"{name}GW{index}", protocol=MeterProtocol.MODBUS_TCP
            )
            await stack.enter_async_context(
                tcp_gateway(fleet, ids, now=now, faults=tcp_faults, seed=seed + index)
            )
        if rtu_meters:
            ids = register_meters(
                session_factory, rtu_meters, prefix=f"{name}RTU", protocol=MeterProtocol.MODBUS_RTU
            )
            await stack.enter_async_context(
                rtu_bus(fleet, ids, now=now, faults=rtu_faults, seed=seed + 100)
            )
        yield fleet
