"""Serve simulated meters over Modbus TCP and Modbus RTU (pymodbus 3.16 SimDevice).

Several meters share one endpoint by unit id, as behind an RS-485 gateway or on one
RS-485 bus. Each meter is a :class:`~meter_sim.model.MeterModel` mapped to registers
by a :class:`~protocols.modbus.Profile`; the register values are computed when they are
read (the model is first advanced to the simulation clock's ``now``) and writes act on
the model (relay, power limit, token entry).

Bad writes are answered with a Modbus exception and change nothing:

- exception 1 (ILLEGAL_FUNCTION): a function the profile does not support (FC06 on
  Eastron and DDS238, FC22/FC23), whatever the address;
- exception 2 (ILLEGAL_ADDRESS): an address no register answers, a write to a
  read-only register, or a write that covers part of a multi-register value or more
  than one value;
- exception 3 (ILLEGAL_VALUE): more registers than the profile allows per request, or
  a value out of range (relay not 0/1, power limit not a whole number of watts within
  0..1,000,000, a meter time outside 2000..2099, a token that is not 20 ASCII digits);
- exception 4 (DEVICE_FAILURE): a valid command the meter refuses in its state (close
  the relay with no credit or under tamper lockout), or a value the register cannot
  represent.

Unit ids with no meter get no answer at all (bus silence), as on a real RS-485 line.
Faults come from each meter's ``MeterConfig.faults``: latency, exception replies,
dropped replies, going offline for whole intervals and, on RTU, replies with a bad CRC.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from meter_sim.clock import SimClock
from meter_sim.faults import FaultInjector
from meter_sim.model import CommandRefused, MeterError, MeterModel, PhaseValues, TokenStatus
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
    offline: bool = False  # taken off the bus by set_offline
    # Offline fault: the interval (of offline_interval_s) last checked, and the interval
    # at which the meter comes back (None while it is online).
    checked_interval: int | None = None
    back_at_interval: int | None = None
    # What to encode where, per block, for refreshing on read.
    slots: dict[Block, tuple[_Slot, ...]] = field(default_factory=dict)


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
        self,
        meters: Sequence[ModbusMeter],
        now: Clock,
        *,
        framer: FramerType,
        seed: int = 0,
        offline_interval_s: int = 900,
    ) -> None:
        """Raise ValueError if ``meters`` is empty, two meters share a unit id or
        ``offline_interval_s`` is not positive."""
        if not meters:
            raise ValueError("at least one meter is needed")
        if offline_interval_s < 1:
            raise ValueError(f"offline_interval_s must be positive: {offline_interval_s}")
        self._offline_interval_s = offline_interval_s
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
                    reg for reg in meter.profile.registers if reg.block is block and reg.codec
                ]
                entries.extend(s for s in meter.profile.settings if s.block is block)
                unit.slots[block] = tuple(_slot(entry) for entry in entries)
            self._units[meter.unit_id] = unit
        self.devices = [self._device(unit) for unit in self._units.values()]
        # The bound (host, port) once a TCP server listens; port 0 picks a free port.
        self.address: tuple[str, int] | None = None
        # Counters for a status line: requests that reached a meter, requests dropped
        # (absent or offline unit), replies dropped and replies sent with a bad CRC.
        self.requests = 0
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

    def is_offline(self, unit_id: int) -> bool:
        """Whether the meter is off the bus now (by :meth:`set_offline` or the offline
        fault). Raise KeyError if no meter has ``unit_id``."""
        unit = self._units[unit_id]
        self._check_offline_fault(unit)
        return unit.offline or unit.back_at_interval is not None

    def _check_offline_fault(self, unit: _Unit) -> None:
        """The offline fault: at each boundary of ``offline_interval_s`` simulated seconds,
        an online meter drops off the bus with probability ``offline_rate`` and comes
        back ``offline_intervals`` intervals later."""
        config = unit.faults.config
        if config.offline_rate <= 0:
            return
        interval = int(self._now().timestamp()) // self._offline_interval_s
        if unit.checked_interval is None or interval - unit.checked_interval > 100_000:
            unit.checked_interval = interval  # first request, or a jump too long to replay
            return
        while unit.checked_interval < interval:
            unit.checked_interval += 1
            if unit.back_at_interval is not None and unit.checked_interval >= unit.back_at_interval:
                unit.back_at_interval = None
            if unit.back_at_interval is None and unit.faults.go_offline():
                unit.back_at_interval = unit.checked_interval + config.offline_intervals

    # --- pymodbus hooks -----------------------------------------------------------------

    def trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU | None:
        """Drop requests for absent or offline unit ids, so the master times out, and
        answer functions the meter lacks with exception 1 before any address check."""
        if sending:
            return pdu
        unit = self._units.get(pdu.dev_id)
        if unit is not None:
            self._check_offline_fault(unit)
        if unit is None or unit.offline or unit.back_at_interval is not None:
            self.dropped_requests += 1
            return None
        fc = pdu.function_code
        if fc in _UNSUPPORTED_FCS or (fc == 6 and not unit.meter.profile.fc06_supported):
            return _UnsupportedRequest(pdu)
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
        self.requests += 1
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
        if block is None:
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
        for slot in unit.slots[block]:
            if slot.address >= end or slot.end <= address:
                continue
            try:
                words = slot.encode(snapshot)
            except CodecError as exc:
                raise _RequestRefused(
                    ExcCodes.DEVICE_FAILURE, f"register {slot.address:#06x}: {exc}"
                ) from None
            offset = slot.address - start
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
        elif reg.point is Prepaid.METER_TIME:
            try:
                model.set_clock(datetime.fromtimestamp(int(number), tz=UTC))
            except (MeterError, OverflowError, OSError, ValueError) as exc:
                raise _RequestRefused(ExcCodes.ILLEGAL_VALUE, f"meter time: {exc}") from None
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


# Mask write (FC22) and read/write multiple (FC23): no meter gridvend knows implements them.
_UNSUPPORTED_FCS = frozenset({22, 23})


class _UnsupportedRequest(ModbusPDU):
    """Stands in for a request whose function the meter lacks: answers exception 1,
    whatever its address, as the meter's firmware would."""

    def __init__(self, request: ModbusPDU) -> None:
        super().__init__(dev_id=request.dev_id, transaction_id=request.transaction_id)
        self.function_code = request.function_code

    async def datastore_update(self, context: object, device_id: int) -> ModbusPDU:
        return ExceptionResponse(self.function_code, ExcCodes.ILLEGAL_FUNCTION)


def _filler(address: int, count: int, *, readonly: bool) -> SimData:
    return SimData(address, count=count, values=0, datatype=DataType.REGISTERS, readonly=readonly)


@dataclass(frozen=True, slots=True)
class _Slot:
    """Where one value sits in a block and how to encode it from a snapshot."""

    address: int
    end: int
    encode: Callable[[_Snapshot], list[int]]


def _slot(entry: Register | Setting) -> _Slot:
    """The slot of a register or a fixed setting; the work that does not depend on the
    meter's state is done here, once."""
    if isinstance(entry, Setting):
        words = entry.codec.encode(entry.value)

        def constant(_: _Snapshot) -> list[int]:
            return words

        return _Slot(entry.address, entry.address + len(words), constant)
    codec = entry.codec
    point = entry.point
    if isinstance(codec, Ascii):
        text_codec = codec
        assert isinstance(point, Prepaid)
        text_point = point

        def text(snapshot: _Snapshot) -> list[int]:
            return text_codec.encode_text(snapshot.text(text_point))

        return _Slot(entry.address, entry.end, text)
    assert codec is not None
    number_codec = codec
    if isinstance(point, Measurand):
        quantity, phase = point.quantity, point.phase

        def measured(snapshot: _Snapshot) -> list[int]:
            return number_codec.encode(snapshot.measured(quantity, phase))

        return _Slot(entry.address, entry.end, measured)
    prepaid_point = point

    def number(snapshot: _Snapshot) -> list[int]:
        return number_codec.encode(snapshot.number(prepaid_point))

    return _Slot(entry.address, entry.end, number)


_PHASE_FIELDS = {
    Quantity.VOLTAGE_V: "voltage_v",
    Quantity.CURRENT_A: "current_a",
    Quantity.ACTIVE_POWER_W: "active_power_w",
    Quantity.POWER_FACTOR: "power_factor",
}
_ZERO = Decimal(0)


class _Snapshot:
    """The model's values at one instant, computed only when a register needs them."""

    __slots__ = ("_measurements", "_phases", "_unit")

    def __init__(self, unit: _Unit) -> None:
        self._unit = unit
        self._measurements: dict[Quantity, Decimal] | None = None
        self._phases: tuple[PhaseValues, ...] | None = None

    def measured(self, quantity: Quantity, phase: int | None) -> Decimal:
        """A measured value for the whole meter (``phase=None``) or one phase; 0 when the
        meter does not have it (a phase beyond its phases, credit in central mode)."""
        model = self._unit.meter.model
        if phase is not None:
            if self._phases is None:
                self._phases = model.phase_values()
            name = _PHASE_FIELDS.get(quantity)
            if name is None or phase > len(self._phases):
                return _ZERO
            value: Decimal = getattr(self._phases[phase - 1], name)
            return value
        if self._measurements is None:
            self._measurements = model.measurements()
        return self._measurements.get(quantity, _ZERO)

    def number(self, point: Prepaid) -> Decimal:
        """A numeric prepaid or identity point."""
        unit = self._unit
        model = unit.meter.model
        match point:
            case Prepaid.RELAY_CLOSED | Prepaid.RELAY_COMMAND:
                return Decimal(int(model.relay_closed))
            case Prepaid.RELAY_REASON:
                return Decimal(RelayReason[model.relay_reason.name])
            case Prepaid.PREPAID_MODE:
                return Decimal(PrepaidMode[model.config.prepaid_mode.name])
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
            case Prepaid.SERIAL_NUMBER:
                return Decimal(_numeric_serial(model.config.serial))
            case Prepaid.DEVICE_ADDRESS:
                return Decimal(unit.meter.unit_id)
            case Prepaid.METER_TIME:
                return Decimal(int(model.meter_time.timestamp()))
        return _ZERO

    def text(self, point: Prepaid) -> str:
        """A text point; the write-only token entry reads as empty (zeros)."""
        config = self._unit.meter.model.config
        if point is Prepaid.METER_NUMBER:
            return config.meter_number
        if point is Prepaid.METER_SERIAL:
            return config.serial
        return ""

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
    offline_interval_s: int = 900,
) -> AsyncIterator[ModbusSimServer]:
    """Serve ``meters`` on ``host:port`` until the context exits.

    A bare ``MeterModel`` at index i is unit id i+1 with ``profile`` (or its sibling
    for the model's number of phases: a three-phase model under
    ``eastron-sdm120-prepaid`` is served as ``eastron-sdm630-prepaid``); pass
    :class:`ModbusMeter` items to choose unit ids and profiles per meter. ``now`` gives
    the simulated time each read advances the models to; ``offline_interval_s`` is the
    simulated interval at which the offline fault is drawn. ``port=0`` picks a free
    port; the bound one is in ``server.address``. ``framer=FramerType.RTU``
    serves RTU frames over TCP, like a transparent RS-485-to-TCP converter.

    Raises:
        ValueError: no meters, a duplicate unit id or a unit id outside 1..247.
        ProfileError: an unknown profile name.
        OSError: the port cannot be bound.
    """
    sim = ModbusSimServer(
        _as_meters(meters, profile),
        now,
        framer=framer,
        seed=seed,
        offline_interval_s=offline_interval_s,
    )
    server = ModbusTcpServer(
        sim.devices,
        address=(host, port),
        framer=framer,
        trace_pdu=sim.trace_pdu,  # type: ignore[arg-type]
        trace_packet=sim.trace_packet,
    )
    try:
        await server.serve_forever(background=True)
    except RuntimeError as exc:
        raise OSError(f"cannot listen for Modbus TCP on {host}:{port}") from exc
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
    offline_interval_s: int = 900,
) -> AsyncIterator[ModbusSimServer]:
    """Serve ``meters`` as Modbus RTU slaves on the serial line ``device`` (8N1).

    Same meters, clock and errors as :func:`serve_modbus_tcp`; ``device`` is a serial
    port path (``/dev/ttyUSB0``, or a pty from :mod:`meter_sim.serial_bridge`).
    """
    sim = ModbusSimServer(
        _as_meters(meters, profile),
        now,
        framer=FramerType.RTU,
        seed=seed,
        offline_interval_s=offline_interval_s,
    )
    server = ModbusSerialServer(
        sim.devices,
        framer=FramerType.RTU,
        port=device,
        baudrate=baudrate,
        trace_pdu=sim.trace_pdu,  # type: ignore[arg-type]
        trace_packet=sim.trace_packet,
    )
    try:
        await server.serve_forever(background=True)
    except RuntimeError as exc:
        raise OSError(f"cannot open serial port {device!r} for Modbus RTU") from exc
    try:
        yield sim
    finally:
        await server.shutdown()
