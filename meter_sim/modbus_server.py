"""Serve simulated meters over Modbus TCP and Modbus RTU (pymodbus 3.16 SimDevice).

Several meters share one endpoint by unit id, as behind an RS-485 gateway or on one
RS-485 bus. Each meter is a :class:`~meter_sim.model.MeterModel` mapped to registers
by a :class:`~protocols.modbus.Profile`; the register values are computed when they are
read (the model is first advanced to the simulation clock's ``now``) and writes act on
the model (relay, power limit, token entry).

Bad writes are answered with a Modbus exception and change nothing:

- exception 1 (ILLEGAL_FUNCTION): a function the profile does not support (FC06 on
  Eastron and DDS238, FC22/FC23);
- exception 2 (ILLEGAL_ADDRESS): an address no register answers, a write to a
  read-only register, or a write that covers part of a multi-register value or more
  than one value;
- exception 3 (ILLEGAL_VALUE): more registers than the profile allows per request, or
  a value out of range (relay not 0/1, power limit not a whole number of watts within
  0..1,000,000, a token that is not 20 ASCII digits);
- exception 4 (DEVICE_FAILURE): a valid command the meter refuses in its state (close
  the relay with no credit or under tamper lockout), or a value the register cannot
  represent.

Unit ids with no meter get no answer at all (bus silence), as on a real RS-485 line.
Faults come from each meter's ``MeterConfig.faults``: latency, exception replies,
dropped replies and, on RTU, replies with a bad CRC.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from meter_sim.clock import SimClock
from meter_sim.faults import FaultInjector
from meter_sim.model import CommandRefused, MeterError, MeterModel, TokenStatus
from protocols.modbus import (
    Ascii,
    Block,
    CodecError,
    EventRecord,
    Measurand,
    Prepaid,
    PrepaidMode,
    Profile,
    Register,
    RelayReason,
    TokenResult,
    get_profile,
    profile_for_phases,
)
from protocols.modbus.registers import Setting
from protocols.quantities import Quantity

__all__ = [
    "Clock",
    "ModbusMeter",
    "ModbusSimServer",
    "serve_modbus_rtu",
    "serve_modbus_tcp",
    "sim_clock_now",
]

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

_BLOCK_OF_FC = {1: Block.COIL, 5: Block.COIL, 15: Block.COIL, 2: Block.DISCRETE_INPUT}
_BLOCK_OF_FC.update({3: Block.HOLDING, 6: Block.HOLDING, 16: Block.HOLDING, 4: Block.INPUT})
_BLOCK_ORDER = (Block.COIL, Block.DISCRETE_INPUT, Block.HOLDING, Block.INPUT)
_WRITE_FCS = frozenset({5, 6, 15, 16})
_MAX_POWER_LIMIT_W = 1_000_000


@dataclass
class ModbusMeter:
    """One meter on the bus: its unit id (1..247), model and profile."""

    unit_id: int
    model: MeterModel
    profile: Profile

    def __post_init__(self) -> None:
        if not 1 <= self.unit_id <= 247:
            raise ValueError(f"unit id must be 1..247, not {self.unit_id}")


@dataclass
class _Unit:
    meter: ModbusMeter
    faults: FaultInjector
    token_count: int = 0
    offline: bool = False
    # Registers (and settings) per block, for refreshing on read.
    by_block: dict[Block, list[Register | Setting]] = field(default_factory=dict)


class _RequestRefused(Exception):
    def __init__(self, code: ExcCodes, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def _numeric_serial(serial: str) -> int:
    """Eastron's serial register is a UINT32: the serial's digits, modulo 2**32."""
    digits = "".join(ch for ch in serial if ch.isdigit())
    return int(digits) % (1 << 32) if digits else 0


class ModbusSimServer:
    """The register logic for the meters behind one endpoint, independent of transport.

    It builds the pymodbus ``SimDevice`` list and the ``trace_pdu`` / ``trace_packet``
    hooks (bus silence, offline meters, dropped replies, bad CRCs). Use it through
    :func:`serve_modbus_tcp` or :func:`serve_modbus_rtu`.
    """

    def __init__(
        self, meters: Sequence[ModbusMeter], now: Clock, *, framer: FramerType, seed: int = 0
    ) -> None:
        """Raise ValueError if ``meters`` is empty or two meters share a unit id."""
        if not meters:
            raise ValueError("at least one meter is needed")
        self._now = now
        self._framer = framer
        self._units: dict[int, _Unit] = {}
        for meter in meters:
            if meter.unit_id in self._units:
                raise ValueError(f"unit id {meter.unit_id} is used twice")
            cfg = meter.model.config
            injector = FaultInjector(
                cfg.faults, seed=(seed * 1_000_003 + cfg.seed) * 251 + meter.unit_id
            )
            unit = _Unit(meter, injector)
            for block in Block:
                entries: list[Register | Setting] = [
                    reg for reg in meter.profile.registers if reg.block is block
                ]
                entries.extend(s for s in meter.profile.settings if s.block is block)
                unit.by_block[block] = entries
            self._units[meter.unit_id] = unit
        self.devices = [self._device(unit) for unit in self._units.values()]
        # The bound (host, port) once a TCP server listens; port 0 picks a free port.
        self.address: tuple[str, int] | None = None
        self.dropped_requests = 0
        self.dropped_replies = 0
        self.corrupted_replies = 0

    # --- public controls ----------------------------------------------------------------

    @property
    def unit_ids(self) -> tuple[int, ...]:
        return tuple(self._units)

    def model(self, unit_id: int) -> MeterModel:
        """The model served as ``unit_id``. Raise KeyError if there is none."""
        return self._units[unit_id].meter.model

    def set_offline(self, unit_id: int, offline: bool = True) -> None:
        """Take a meter off the bus (it stops answering) or bring it back.

        Raise KeyError if no meter has ``unit_id``.
        """
        self._units[unit_id].offline = offline

    # --- pymodbus hooks -----------------------------------------------------------------

    def trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU | None:
        """Drop requests for absent or offline unit ids, so the master times out."""
        if sending:
            return pdu
        unit = self._units.get(pdu.dev_id)
        if unit is None or unit.offline:
            self.dropped_requests += 1
            return None
        return pdu

    def trace_packet(self, sending: bool, packet: bytes) -> bytes:
        """Apply reply faults to outgoing frames: drop them, or spoil the RTU CRC."""
        if not sending or not packet:
            return packet
        unit_index = 0 if self._framer is FramerType.RTU else 6
        unit = self._units.get(packet[unit_index]) if len(packet) > unit_index else None
        if unit is None:
            return packet
        if unit.faults.drop():
            self.dropped_replies += 1
            return b""
        if self._framer is FramerType.RTU and unit.faults.corrupt_frame():
            self.corrupted_replies += 1
            return packet[:-1] + bytes([packet[-1] ^ 0xFF])
        return packet

    # --- device construction ------------------------------------------------------------

    def _device(self, unit: _Unit) -> SimDevice:
        profile = unit.meter.profile
        blocks: list[list[SimData]] = []
        for block in _BLOCK_ORDER:
            spans = [s for s in profile.spans if s.block is block]
            if block.is_bits:
                # pymodbus wants a non-empty bit block; the action refuses unmapped bits.
                blocks.append(
                    [
                        SimData(s.start, count=s.count, values=False, datatype=DataType.BITS)
                        for s in spans
                    ]
                    or [SimData(0, values=False, datatype=DataType.BITS)]
                )
                continue
            writable = {
                (reg.address, reg.count)
                for reg in profile.registers
                if reg.block is block and reg.access.writable
            }
            data: list[SimData] = []
            for span in spans:
                address = span.start
                for start, count in sorted(w for w in writable if span.start <= w[0] < span.end):
                    if start > address:
                        data.append(_filler(address, start - address, readonly=True))
                    data.append(_filler(start, count, readonly=False))
                    address = start + count
                if address < span.end:
                    data.append(_filler(address, span.end - address, readonly=True))
            blocks.append(data or [SimData(0, datatype=DataType.INVALID)])
        coils, discrete, holding, inputs = blocks

        async def action(
            fc: int,
            start: int,
            address: int,
            count: int,
            registers: list[int],
            set_values: list[int] | list[bool] | None,
        ) -> ExcCodes | None:
            return await self._action(unit, fc, start, address, count, registers, set_values)

        return SimDevice(
            id=unit.meter.unit_id, simdata=(coils, discrete, holding, inputs), action=action
        )

    # --- request handling ---------------------------------------------------------------

    async def _action(
        self,
        unit: _Unit,
        fc: int,
        start: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if set_values is None and fc in (5, 6):
            return None  # the read-back pymodbus does to echo a single write
        latency = unit.faults.latency()
        if latency > 0:
            await asyncio.sleep(latency)
        fault = unit.faults.modbus_exception()
        if fault is not None:
            try:
                return ExcCodes(fault)
            except ValueError:
                return ExcCodes.DEVICE_FAILURE
        block = _BLOCK_OF_FC.get(fc)
        profile = unit.meter.profile
        if block is None or (fc == 6 and not profile.fc06_supported):
            return ExcCodes.ILLEGAL_FUNCTION
        if not block.is_bits and count > profile.max_registers_per_request:
            return ExcCodes.ILLEGAL_VALUE
        if block.is_bits and not profile.answers(block, address, address + 1):
            return ExcCodes.ILLEGAL_ADDRESS
        model = unit.meter.model
        try:
            model.advance(max(self._now(), model.now))
            if set_values is None:
                self._refresh(unit, block, start, address, count, registers)
            else:
                self._write(unit, block, address, set_values)
        except _RequestRefused as refused:
            log.debug("unit %s: %s", unit.meter.unit_id, refused)
            return refused.code
        except MeterError as exc:
            # The clock left the model's range, or the model refused in some other way:
            # a real meter would report an internal failure, not crash the bus.
            log.warning("unit %s: %s", unit.meter.unit_id, exc)
            return ExcCodes.DEVICE_FAILURE
        return None

    def _refresh(
        self, unit: _Unit, block: Block, start: int, address: int, count: int, registers: list[int]
    ) -> None:
        """Write the current values of the registers in the read range into ``registers``."""
        if block.is_bits:
            # Bit blocks hold 16 coils per word, coil n at bit n % 16 of word n // 16.
            relay = unit.meter.profile.find(Prepaid.RELAY_COMMAND)
            if relay is not None and relay.block is block:
                bit = 1 << (relay.address % 16)
                index = relay.address // 16 - start
                if unit.meter.model.relay_closed:
                    registers[index] |= bit
                else:
                    registers[index] &= ~bit
            return
        end = address + count
        snapshot = _Snapshot(unit)
        for entry in unit.by_block[block]:
            if entry.address >= end or entry.address + entry.count <= address:
                continue
            words = snapshot.encode(entry)
            offset = entry.address - start
            registers[offset : offset + len(words)] = words
        log_ = unit.meter.profile.event_log
        if (
            block is Block.HOLDING
            and log_ is not None
            and log_.address < end
            and address < log_.end
        ):
            words = log_.encode(snapshot.event_records(log_.records))
            offset = log_.address - start
            registers[offset : offset + len(words)] = words

    def _write(
        self, unit: _Unit, block: Block, address: int, values: list[int] | list[bool]
    ) -> None:
        """Validate a write against the map and apply it to the model, or refuse it."""
        profile = unit.meter.profile
        model = unit.meter.model
        if block.is_bits:
            relay = profile.find(Prepaid.RELAY_COMMAND)
            if relay is None or relay.block is not Block.COIL or address != relay.address:
                raise _RequestRefused(ExcCodes.ILLEGAL_ADDRESS, f"no coil at {address}")
            if len(values) != 1:
                raise _RequestRefused(ExcCodes.ILLEGAL_ADDRESS, "write exactly the relay coil")
            self._set_relay(model, bool(values[0]))
            return
        end = address + len(values)
        targets = [
            reg
            for reg in profile.registers
            if reg.block is block and reg.address < end and address < reg.end
        ]
        if len(targets) != 1 or (targets[0].address, targets[0].end) != (address, end):
            raise _RequestRefused(
                ExcCodes.ILLEGAL_ADDRESS, "a write must cover exactly one writable value"
            )
        reg = targets[0]
        if not reg.access.writable or reg.codec is None:
            raise _RequestRefused(ExcCodes.ILLEGAL_ADDRESS, f"{reg.point} is read-only")
        words = [int(v) for v in values]
        try:
            if isinstance(reg.codec, Ascii):
                text = reg.codec.decode_text(words)
                number = Decimal(0)
            else:
                text = ""
                number = reg.codec.decode(words)
        except CodecError as exc:
            raise _RequestRefused(ExcCodes.ILLEGAL_VALUE, str(exc)) from None
        if reg.point is Prepaid.RELAY_COMMAND:
            if number not in (0, 1):
                raise _RequestRefused(ExcCodes.ILLEGAL_VALUE, "relay command must be 0 or 1")
            self._set_relay(model, number == 1)
        elif reg.point is Prepaid.POWER_LIMIT_W:
            if number != number.to_integral_value() or not 0 <= number <= _MAX_POWER_LIMIT_W:
                raise _RequestRefused(
                    ExcCodes.ILLEGAL_VALUE, f"power limit must be whole watts 0..1000000: {number}"
                )
            try:
                model.set_power_limit(int(number) or None)
            except MeterError as exc:
                raise _RequestRefused(ExcCodes.ILLEGAL_VALUE, str(exc)) from None
        elif reg.point is Prepaid.TOKEN_ENTRY:
            if len(text) != 20 or not text.isdigit():
                raise _RequestRefused(ExcCodes.ILLEGAL_VALUE, "a token is 20 ASCII digits")
            model.enter_token(text, model.now)
            unit.token_count = (unit.token_count + 1) % 0x10000
        else:
            raise _RequestRefused(ExcCodes.ILLEGAL_ADDRESS, f"{reg.point} is not writable")

    @staticmethod
    def _set_relay(model: MeterModel, closed: bool) -> None:
        try:
            model.set_relay(closed)
        except CommandRefused as exc:
            raise _RequestRefused(ExcCodes.DEVICE_FAILURE, str(exc)) from None


def _filler(address: int, count: int, *, readonly: bool) -> SimData:
    return SimData(address, count=count, values=0, datatype=DataType.REGISTERS, readonly=readonly)


class _Snapshot:
    """The model's values at one instant, computed only when a register needs them."""

    def __init__(self, unit: _Unit) -> None:
        self._unit = unit
        self._measurements: dict[Quantity, Decimal] | None = None

    def _measurement(self, measurand: Measurand) -> Decimal:
        model = self._unit.meter.model
        if measurand.phase is not None:
            phases = model.phase_values()
            if measurand.phase > len(phases):
                return Decimal(0)
            values = phases[measurand.phase - 1]
            return {
                Quantity.VOLTAGE_V: values.voltage_v,
                Quantity.CURRENT_A: values.current_a,
                Quantity.ACTIVE_POWER_W: values.active_power_w,
                Quantity.POWER_FACTOR: values.power_factor,
            }.get(measurand.quantity, Decimal(0))
        if self._measurements is None:
            self._measurements = model.measurements()
        return self._measurements.get(measurand.quantity, Decimal(0))

    def _prepaid(self, point: Prepaid) -> Decimal | str:
        unit = self._unit
        model = unit.meter.model
        cfg = model.config
        match point:
            case Prepaid.RELAY_CLOSED | Prepaid.RELAY_COMMAND:
                return Decimal(int(model.relay_closed))
            case Prepaid.RELAY_REASON:
                return Decimal(RelayReason[model.relay_reason.name])
            case Prepaid.PREPAID_MODE:
                return Decimal(PrepaidMode[cfg.prepaid_mode.name])
            case Prepaid.TOKEN_RESULT:
                if not model.token_results:
                    return Decimal(TokenResult.NONE)
                return Decimal(TokenResult[model.token_results[-1].status.name])
            case Prepaid.TOKEN_COUNT:
                return Decimal(unit.token_count)
            case Prepaid.POWER_LIMIT_W:
                return Decimal(model.power_limit_w or 0)
            case Prepaid.EVENT_COUNT:
                return Decimal(model.event_count)
            case Prepaid.TOKEN_ENTRY:
                return ""  # write-only: reads as zeros
            case Prepaid.METER_NUMBER:
                return cfg.meter_number
            case Prepaid.METER_SERIAL:
                return cfg.serial
            case Prepaid.SERIAL_NUMBER:
                return Decimal(_numeric_serial(cfg.serial))
            case Prepaid.DEVICE_ADDRESS:
                return Decimal(unit.meter.unit_id)
        return Decimal(0)

    def encode(self, entry: Register | Setting) -> list[int]:
        """The registers of ``entry`` now.

        Raise _RequestRefused (device failure) if the value does not fit the register.
        """
        if isinstance(entry, Setting):
            return entry.codec.encode(entry.value)
        assert entry.codec is not None
        value = (
            self._measurement(entry.point)
            if isinstance(entry.point, Measurand)
            else self._prepaid(entry.point)
        )
        try:
            if isinstance(entry.codec, Ascii):
                return entry.codec.encode_text(value if isinstance(value, str) else "")
            return entry.codec.encode(value if isinstance(value, Decimal) else Decimal(0))
        except CodecError as exc:
            raise _RequestRefused(ExcCodes.DEVICE_FAILURE, f"{entry.point}: {exc}") from None

    def event_records(self, records: int) -> list[EventRecord]:
        """The newest ``records`` events of the model, newest first."""
        result = []
        for event in reversed(self._unit.meter.model.events[-records:]):
            detail = 0
            if "closed" in event.detail:
                detail = int(bool(event.detail["closed"]))
            elif "status" in event.detail:
                detail = TokenResult[TokenStatus(str(event.detail["status"])).name]
            result.append(EventRecord(event.seq, event.kind, event.ts, detail))
        return result


def sim_clock_now(clock: SimClock) -> Clock:
    """A ``now`` for the servers: ``clock``'s simulated time at the running loop's time.

    ``clock`` must have been created with ``real_origin=loop.time()`` of this loop.
    Raise RuntimeError when called outside a running event loop.
    """
    loop = asyncio.get_running_loop()
    return lambda: clock.now(loop.time())


def _as_meters(
    meters: Sequence[MeterModel | ModbusMeter], profile: Profile | str
) -> list[ModbusMeter]:
    default = get_profile(profile) if isinstance(profile, str) else profile
    return [
        m
        if isinstance(m, ModbusMeter)
        else ModbusMeter(index + 1, m, profile_for_phases(default, m.config.phases))
        for index, m in enumerate(meters)
    ]


@asynccontextmanager
async def serve_modbus_tcp(
    meters: Sequence[MeterModel | ModbusMeter],
    *,
    now: Clock,
    host: str = "127.0.0.1",
    port: int = 502,
    profile: Profile | str = "eastron-sdm120-prepaid",
    framer: FramerType = FramerType.SOCKET,
    seed: int = 0,
) -> AsyncIterator[ModbusSimServer]:
    """Serve ``meters`` on ``host:port`` until the context exits.

    A bare ``MeterModel`` at index i is unit id i+1 with ``profile`` (or its sibling
    for the model's number of phases: a three-phase model under
    ``eastron-sdm120-prepaid`` is served as ``eastron-sdm630-prepaid``); pass
    :class:`ModbusMeter` items to choose unit ids and profiles per meter. ``now`` gives
    the simulated time each read advances the models to. ``port=0`` picks a free
    port; the bound one is in ``server.address``. ``framer=FramerType.RTU``
    serves RTU frames over TCP, like a transparent RS-485-to-TCP converter.

    Raises:
        ValueError: no meters, a duplicate unit id or a unit id outside 1..247.
        ProfileError: an unknown profile name.
        RuntimeError: the port cannot be bound (pymodbus reports it so).
    """
    sim = ModbusSimServer(_as_meters(meters, profile), now, framer=framer, seed=seed)
    server = ModbusTcpServer(
        sim.devices,
        address=(host, port),
        framer=framer,
        trace_pdu=sim.trace_pdu,  # type: ignore[arg-type]
        trace_packet=sim.trace_packet,
    )
    await server.serve_forever(background=True)
    listener = server.transport
    sockets = getattr(listener, "sockets", None)
    sim.address = sockets[0].getsockname()[:2] if sockets else (host, port)
    try:
        yield sim
    finally:
        await server.shutdown()


@asynccontextmanager
async def serve_modbus_rtu(
    meters: Sequence[MeterModel | ModbusMeter],
    *,
    now: Clock,
    device: str,
    baudrate: int = 9600,
    profile: Profile | str = "eastron-sdm120-prepaid",
    seed: int = 0,
) -> AsyncIterator[ModbusSimServer]:
    """Serve ``meters`` as Modbus RTU slaves on the serial line ``device`` (8N1).

    Same meters, clock and errors as :func:`serve_modbus_tcp`; ``device`` is a serial
    port path (``/dev/ttyUSB0``, or a pty from :mod:`meter_sim.serial_bridge`).
    """
    sim = ModbusSimServer(_as_meters(meters, profile), now, framer=FramerType.RTU, seed=seed)
    server = ModbusSerialServer(
        sim.devices,
        framer=FramerType.RTU,
        port=device,
        baudrate=baudrate,
        trace_pdu=sim.trace_pdu,  # type: ignore[arg-type]
        trace_packet=sim.trace_packet,
    )
    await server.serve_forever(background=True)
    try:
        yield sim
    finally:
        await server.shutdown()
