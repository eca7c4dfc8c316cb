"""The register map: which value lives at which Modbus address, in which block, how encoded.

This module is the one source of truth read by the meter simulator (to serve values) and
by the head-end (to plan reads and decode replies). It holds the vocabulary (blocks,
points, codes of the prepaid extension) and the register tables of each profile;
``protocols.modbus.profiles`` assembles the tables into named meter profiles.

Addresses are wire addresses (0-based PDU addresses). Eastron manuals number input
registers 30001.. and holding registers 40001..: wire address = number - 30001 / 40001.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_FLOOR, Decimal

from protocols.modbus.codecs import Ascii, Codec, CodecError, Float32, ScaledInt, check_registers
from protocols.mqtt.payloads import EventKind
from protocols.quantities import Quantity

__all__ = [
    "EVENT_CODES",
    "EVENT_RECORD_REGISTERS",
    "Access",
    "Block",
    "EventLog",
    "EventRecord",
    "Measurand",
    "Point",
    "Prepaid",
    "PrepaidMode",
    "Register",
    "RelayReason",
    "Setting",
    "Span",
    "TokenResult",
]


class Block(enum.StrEnum):
    """The four Modbus data tables, each with its read function code."""

    COIL = "coil"
    DISCRETE_INPUT = "discrete_input"
    HOLDING = "holding"
    INPUT = "input"

    @property
    def read_function(self) -> int:
        return _READ_FC[self]

    @property
    def is_bits(self) -> bool:
        return self in _BIT_BLOCKS


_READ_FC = {Block.COIL: 1, Block.DISCRETE_INPUT: 2, Block.HOLDING: 3, Block.INPUT: 4}
_BIT_BLOCKS = frozenset({Block.COIL, Block.DISCRETE_INPUT})


class Access(enum.StrEnum):
    READ = "r"
    WRITE = "w"
    READ_WRITE = "rw"

    @property
    def readable(self) -> bool:
        return self is not Access.WRITE

    @property
    def writable(self) -> bool:
        return self is not Access.READ


@dataclass(frozen=True, slots=True)
class Measurand:
    """A measured quantity, for the whole meter (``phase=None``) or one phase (1..3).

    For a whole meter, voltage is the average line-to-neutral voltage, current the sum
    of the line currents (Eastron's conventions), power and energy are totals.
    """

    quantity: Quantity
    phase: int | None = None

    def __post_init__(self) -> None:
        if self.phase is not None and self.phase not in (1, 2, 3):
            raise ValueError(f"phase must be 1, 2, 3 or None, not {self.phase}")

    def __str__(self) -> str:
        return self.quantity.value if self.phase is None else f"{self.quantity.value}:L{self.phase}"


class Prepaid(enum.StrEnum):
    """Points that are not measured quantities: the prepaid extension and device identity."""

    RELAY_CLOSED = "relay_closed"  # 1 closed (supply on), 0 open
    RELAY_REASON = "relay_reason"  # RelayReason code of the last change
    PREPAID_MODE = "prepaid_mode"  # PrepaidMode code
    TOKEN_RESULT = "token_result"  # TokenResult of the last entered token
    TOKEN_COUNT = "token_count"  # tokens entered so far, modulo 65536
    POWER_LIMIT_W = "power_limit_w"  # 0 means no limit
    EVENT_COUNT = "event_count"  # sequence number of the newest event
    TOKEN_ENTRY = "token_entry"  # 20 ASCII digits, written in one FC16 request
    METER_NUMBER = "meter_number"  # STS meter number (PAN digits), ASCII
    METER_SERIAL = "meter_serial"  # manufacturer serial, ASCII
    RELAY_COMMAND = "relay_command"  # the actuator: write 1 to close, 0 to open
    EVENT_LOG = "event_log"  # the newest events, see EventLog
    SERIAL_NUMBER = "serial_number"  # numeric serial (Eastron UINT32 at 0xFC00)
    METER_TIME = "meter_time"  # the meter's clock, Unix seconds UTC; write to set it
    DEVICE_ADDRESS = "device_address"  # the Modbus unit id the meter answers to


class RelayReason(enum.IntEnum):
    """Why the relay last changed state (register RELAY_REASON).

    Member names are the simulator's relay reasons, upper-cased.
    """

    INITIAL = 0  # as it was at power-up
    CREDIT_EXHAUSTED = 1
    REMOTE = 2  # a connect/disconnect command
    POWER_LIMIT = 3
    TAMPER = 4
    CREDIT_RESTORED = 5  # a credit token closed it again
    AUTO_RECONNECT = 6  # reconnected after a power-limit trip
    TAMPER_CLEARED = 7


class PrepaidMode(enum.IntEnum):
    TOKEN = 0  # STS: credit lives in the meter
    CENTRAL = 1  # credit lives in the head-end; the relay obeys commands


class TokenResult(enum.IntEnum):
    """Result of the last token entered (register TOKEN_RESULT), as real STS meters show it."""

    NONE = 0  # no token entered since power-up
    ACCEPT = 1
    USED = 2
    OLD = 3
    KEY_EXPIRED = 4
    ERROR = 5  # format, range, function, overflow or key type error
    REJECT = 6  # CRC mismatch: wrong key, wrong meter or a typo
    KEY_CHANGE_1ST = 7  # first half of a key change accepted, waiting for the second
    NOT_SUPPORTED = 8  # no STS decoder (central-mode meter)


# Event codes in the event log; the names are the MQTT event kinds, so an event means the
# same thing whichever transport carried it.
EVENT_CODES: dict[EventKind, int] = {
    EventKind.POWER_UP: 1,
    EventKind.POWER_DOWN: 2,
    EventKind.COVER_OPEN: 3,
    EventKind.MAGNETIC_TAMPER: 4,
    EventKind.RELAY_CHANGED: 5,
    EventKind.LOW_CREDIT: 6,
    EventKind.CREDIT_EXHAUSTED: 7,
    EventKind.TOKEN_ACCEPTED: 8,
    EventKind.TOKEN_REJECTED: 9,
    EventKind.POWER_LIMIT_EXCEEDED: 10,
}
_EVENT_KINDS = {code: kind for kind, code in EVENT_CODES.items()}

Point = Measurand | Prepaid


@dataclass(frozen=True, slots=True)
class Register:
    """One value in the map: ``point`` at ``address`` of ``block``, encoded with ``codec``.

    Coils hold one bit per address and use no codec (``codec=None``).
    """

    point: Point
    block: Block
    address: int
    codec: Codec | None
    access: Access = Access.READ
    description: str = ""
    # Number of addresses used (registers, or 1 bit) and one past the last; derived,
    # stored because the simulator consults them on every request.
    count: int = field(init=False, repr=False, compare=False)
    end: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.block.is_bits != (self.codec is None):
            raise ValueError(f"{self.point}: bit blocks take no codec, register blocks need one")
        count = 1 if self.codec is None else self.codec.registers
        if not 0 <= self.address <= 0xFFFF - count + 1:
            raise ValueError(f"{self.point}: address {self.address} out of range")
        object.__setattr__(self, "count", count)
        object.__setattr__(self, "end", self.address + count)


@dataclass(frozen=True, slots=True)
class Span:
    """A range of addresses a meter answers without an exception.

    Addresses inside a span that no Register names read as zero (Eastron meters answer
    a contiguous read across unused addresses; sdm-modbus relies on it).
    """

    block: Block
    start: int
    count: int

    @property
    def end(self) -> int:
        return self.start + self.count

    def covers(self, block: Block, start: int, end: int) -> bool:
        return block is self.block and self.start <= start and end <= self.end


# ---------------------------------------------------------------------------------------
# Event log: the newest events, newest first, in fixed-size records.

EVENT_RECORD_REGISTERS = 6
_U32 = ScaledInt(words=2)
_U16 = ScaledInt(words=1)


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One event as the register map carries it.

    ``detail`` is kind-specific: relay_changed 1 closed / 0 open; token_accepted and
    token_rejected the TokenResult code; otherwise 0.
    """

    seq: int
    kind: EventKind
    at: datetime
    detail: int = 0

    def encode(self) -> list[int]:
        """Six registers: seq UINT32, code UINT16, unix time UINT32 (s, UTC), detail UINT16.

        Raises:
            CodecError: a field is out of its register's range, or ``at`` is naive.
        """
        if self.at.tzinfo is None:
            raise CodecError("event time must be timezone-aware")
        seconds = Decimal(int(self.at.timestamp()))
        return [
            *_U32.encode(Decimal(self.seq)),
            *_U16.encode(Decimal(EVENT_CODES[self.kind])),
            *_U32.encode(seconds),
            *_U16.encode(Decimal(self.detail)),
        ]

    @classmethod
    def decode(cls, registers: Sequence[int]) -> EventRecord | None:
        """Decode one record; an all-zero record (an empty slot) gives None.

        Raises:
            CodecError: wrong length or an unknown event code.
        """
        check_registers(registers, EVENT_RECORD_REGISTERS)
        if not any(registers):
            return None
        code = int(_U16.decode(registers[2:3]))
        kind = _EVENT_KINDS.get(code)
        if kind is None:
            raise CodecError(f"unknown event code {code}")
        return cls(
            seq=int(_U32.decode(registers[0:2])),
            kind=kind,
            at=datetime.fromtimestamp(int(_U32.decode(registers[3:5])), tz=UTC),
            detail=int(_U16.decode(registers[5:6])),
        )


@dataclass(frozen=True, slots=True)
class EventLog:
    """``records`` event records from ``address`` in the holding block, newest first."""

    address: int
    records: int

    @property
    def count(self) -> int:
        return self.records * EVENT_RECORD_REGISTERS

    @property
    def end(self) -> int:
        return self.address + self.count

    def encode(self, events: Iterable[EventRecord]) -> list[int]:
        """Registers for the newest ``records`` of ``events`` (given newest first), zero-padded.

        Raises:
            CodecError: an event does not fit its record.
        """
        words: list[int] = []
        for event in list(events)[: self.records]:
            words.extend(event.encode())
        return words + [0] * (self.count - len(words))

    def decode(self, registers: Sequence[int]) -> list[EventRecord]:
        """Decode the whole log (``count`` registers), newest first, empty slots skipped.

        Raises:
            CodecError: wrong length or a malformed record.
        """
        check_registers(registers, self.count)
        records = []
        for i in range(self.records):
            start = i * EVENT_RECORD_REGISTERS
            record = EventRecord.decode(registers[start : start + EVENT_RECORD_REGISTERS])
            if record is not None:
                records.append(record)
        return records


# ---------------------------------------------------------------------------------------
# Register tables.

F32 = Float32()


def _m(
    quantity: Quantity, address: int, block: Block = Block.INPUT, phase: int | None = None
) -> Register:
    return Register(Measurand(quantity, phase), block, address, F32, Access.READ)


# Eastron SDM120 input registers (float32, FC04) that carry a gridvend quantity.
SDM120_INPUT: tuple[Register, ...] = (
    _m(Quantity.VOLTAGE_V, 0x0000),
    _m(Quantity.CURRENT_A, 0x0006),
    _m(Quantity.ACTIVE_POWER_W, 0x000C),
    _m(Quantity.POWER_FACTOR, 0x001E),
    _m(Quantity.FREQUENCY_HZ, 0x0046),
    _m(Quantity.ENERGY_IMPORT_KWH, 0x0048),
    _m(Quantity.ENERGY_EXPORT_KWH, 0x004A),
)
# Eastron answers 0x0000..0x0159 contiguously (up to total kVArh at 0x0158).
SDM120_INPUT_SPAN = Span(Block.INPUT, 0x0000, 0x015A)

# Eastron SDM630 input registers: per phase, then system values.
SDM630_INPUT: tuple[Register, ...] = (
    *(_m(Quantity.VOLTAGE_V, 0x0000 + 2 * i, phase=i + 1) for i in range(3)),
    *(_m(Quantity.CURRENT_A, 0x0006 + 2 * i, phase=i + 1) for i in range(3)),
    *(_m(Quantity.ACTIVE_POWER_W, 0x000C + 2 * i, phase=i + 1) for i in range(3)),
    *(_m(Quantity.POWER_FACTOR, 0x001E + 2 * i, phase=i + 1) for i in range(3)),
    _m(Quantity.VOLTAGE_V, 0x002A),  # average line-to-neutral voltage
    _m(Quantity.CURRENT_A, 0x0030),  # sum of line currents
    _m(Quantity.ACTIVE_POWER_W, 0x0034),
    _m(Quantity.POWER_FACTOR, 0x003E),
    _m(Quantity.FREQUENCY_HZ, 0x0046),
    _m(Quantity.ENERGY_IMPORT_KWH, 0x0048),
    _m(Quantity.ENERGY_EXPORT_KWH, 0x004A),
)
SDM630_INPUT_SPAN = Span(Block.INPUT, 0x0000, 0x016C)


@dataclass(frozen=True, slots=True)
class Setting:
    """A fixed register value a real meter has and gridvend does not use (kept so that
    third-party tools reading the simulator find what they expect)."""

    block: Block
    address: int
    codec: Float32 | ScaledInt
    value: Decimal
    description: str

    @property
    def count(self) -> int:
        return self.codec.registers


# Eastron holding registers (float32), FC03; served as fixed settings.
EASTRON_SETTINGS: tuple[Setting, ...] = (
    Setting(Block.HOLDING, 0x0000, F32, Decimal(0), "demand time (min)"),
    Setting(Block.HOLDING, 0x0002, F32, Decimal(60), "demand period (min)"),
    Setting(Block.HOLDING, 0x000C, F32, Decimal(100), "pulse width (ms)"),
    Setting(Block.HOLDING, 0x0012, F32, Decimal(0), "parity/stop code (0: 1 stop bit, no parity)"),
    Setting(Block.HOLDING, 0x001C, F32, Decimal(2), "baud code (2: 9600 baud)"),
)
EASTRON_IDENTITY: tuple[Register, ...] = (
    Register(Prepaid.DEVICE_ADDRESS, Block.HOLDING, 0x0014, F32, Access.READ),
    Register(Prepaid.SERIAL_NUMBER, Block.HOLDING, 0xFC00, ScaledInt(words=2), Access.READ),
)
EASTRON_SETTINGS_SPAN = Span(Block.HOLDING, 0x0000, 0x0020)
EASTRON_SERIAL_SPAN = Span(Block.HOLDING, 0xFC00, 2)


def prepaid_extension(
    base: int,
    *,
    credit_codec: Codec,
    power_limit_codec: Codec,
) -> tuple[tuple[Register, ...], EventLog, Span]:
    """The gridvend prepaid extension block in holding registers from ``base``.

    Layout (offsets from ``base``): 0 relay closed, 1 relay reason, 2 prepaid mode,
    3 last token result, 4 token count, 5 reserved, 6-7 credit kWh, 8-9 power limit W,
    10-11 event count (UINT32), 12-13 meter clock (UINT32 Unix seconds, writable),
    16-25 token entry (20 ASCII digits), 32-41 STS meter number (ASCII, 20 chars),
    48-79 serial (ASCII, 64 chars), 80-127 event log (8 records of 6 registers).

    Returns the registers, the event log and the span the meter answers.
    """
    u16 = ScaledInt(words=1)
    regs = [
        Register(Prepaid.RELAY_CLOSED, Block.HOLDING, base + 0, u16, Access.READ),
        Register(Prepaid.RELAY_REASON, Block.HOLDING, base + 1, u16, Access.READ),
        Register(Prepaid.PREPAID_MODE, Block.HOLDING, base + 2, u16, Access.READ),
        Register(Prepaid.TOKEN_RESULT, Block.HOLDING, base + 3, u16, Access.READ),
        Register(Prepaid.TOKEN_COUNT, Block.HOLDING, base + 4, u16, Access.READ),
        Register(
            Measurand(Quantity.CREDIT_KWH), Block.HOLDING, base + 6, credit_codec, Access.READ
        ),
        Register(
            Prepaid.POWER_LIMIT_W, Block.HOLDING, base + 8, power_limit_codec, Access.READ_WRITE
        ),
        Register(Prepaid.EVENT_COUNT, Block.HOLDING, base + 10, ScaledInt(words=2), Access.READ),
        Register(
            Prepaid.METER_TIME, Block.HOLDING, base + 12, ScaledInt(words=2), Access.READ_WRITE
        ),
        Register(Prepaid.TOKEN_ENTRY, Block.HOLDING, base + 16, Ascii(10), Access.WRITE),
        Register(Prepaid.METER_NUMBER, Block.HOLDING, base + 32, Ascii(10), Access.READ),
        Register(Prepaid.METER_SERIAL, Block.HOLDING, base + 48, Ascii(32), Access.READ),
    ]
    log = EventLog(base + 80, 8)
    return tuple(regs), log, Span(Block.HOLDING, base, log.end - base)


PREPAID_BASE = 0x1000
# Eastron-style: float32 values, like the rest of the meter.
EASTRON_PREPAID, EASTRON_EVENT_LOG, EASTRON_PREPAID_SPAN = prepaid_extension(
    PREPAID_BASE, credit_codec=F32, power_limit_codec=F32
)
EASTRON_RELAY_COIL = Register(
    Prepaid.RELAY_COMMAND,
    Block.COIL,
    0x0000,
    None,
    Access.READ_WRITE,
    "relay: FC05 0xFF00 closes (supply on), 0x0000 opens; FC01 reads the state",
)

# DDS238-2 ZN/S (holding registers, scaled integers, FC03 to read, FC16 to write).
# Energy floors to the register resolution: a meter never shows energy not yet consumed.
_DDS_E = ScaledInt(words=2, exponent=-2, rounding=ROUND_FLOOR)
DDS238_REGISTERS: tuple[Register, ...] = (
    Register(Measurand(Quantity.ENERGY_EXPORT_KWH), Block.HOLDING, 0x0008, _DDS_E),
    Register(Measurand(Quantity.ENERGY_IMPORT_KWH), Block.HOLDING, 0x000A, _DDS_E),
    Register(Measurand(Quantity.VOLTAGE_V), Block.HOLDING, 0x000C, ScaledInt(exponent=-1)),
    Register(Measurand(Quantity.CURRENT_A), Block.HOLDING, 0x000D, ScaledInt(exponent=-2)),
    Register(Measurand(Quantity.ACTIVE_POWER_W), Block.HOLDING, 0x000E, ScaledInt(signed=True)),
    Register(Measurand(Quantity.POWER_FACTOR), Block.HOLDING, 0x0010, ScaledInt(exponent=-3)),
    Register(Measurand(Quantity.FREQUENCY_HZ), Block.HOLDING, 0x0011, ScaledInt(exponent=-2)),
    Register(
        Prepaid.RELAY_COMMAND,
        Block.HOLDING,
        0x001A,
        ScaledInt(),
        Access.READ_WRITE,
        "relay: 1 closed (supply on), 0 open; FC16 only (FC06 answers exception 1)",
    ),
)
DDS238_TOTAL_ENERGY_ADDRESS = 0x0000  # UINT32 x0.01 kWh, import + export
DDS238_SPAN = Span(Block.HOLDING, 0x0000, 0x001B)
# Prepaid extension for the DDS238-style profile: scaled integers, like its own map.
# Credit floors so the meter never shows energy it does not have.
DDS238_PREPAID, DDS238_EVENT_LOG, DDS238_PREPAID_SPAN = prepaid_extension(
    0x0100,
    credit_codec=ScaledInt(words=2, exponent=-2, rounding=ROUND_FLOOR),
    power_limit_codec=ScaledInt(words=2),
)
