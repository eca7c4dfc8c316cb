"""The master's side of a profile: plan requests, decode replies, build writes.

Pure functions; the head-end's poller sends the planned requests with whatever client it
uses and hands the raw registers (or coil bits) back here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal

from protocols.modbus.codecs import Ascii, CodecError, check_registers
from protocols.modbus.profiles import Profile, ProfileError, RelayActuator
from protocols.modbus.registers import (
    Block,
    EventRecord,
    Measurand,
    Point,
    Prepaid,
    Register,
)
from protocols.quantities import Quantity

__all__ = [
    "PointValue",
    "ReadRequest",
    "WriteRequest",
    "clock_write",
    "decode_event_log",
    "decode_points",
    "decode_readings",
    "meter_time",
    "meter_totals",
    "plan_reads",
    "power_limit_write",
    "relay_write",
    "routine_points",
    "token_write",
]

PointValue = Decimal | str


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One read: ``count`` registers (or coils) of ``block`` from ``address``."""

    block: Block
    address: int
    count: int

    @property
    def function_code(self) -> int:
        return self.block.read_function

    @property
    def end(self) -> int:
        return self.address + self.count


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """One write. ``function_code`` 5 carries one coil in ``bits``; 16 carries ``registers``."""

    function_code: int
    address: int
    registers: tuple[int, ...] = ()
    bits: tuple[bool, ...] = ()


def _point_range(profile: Profile, point: Point) -> tuple[Block, int, int]:
    if point is Prepaid.EVENT_LOG:
        if profile.event_log is None:
            raise ProfileError(f"profile {profile.name!r} has no event log")
        return Block.HOLDING, profile.event_log.address, profile.event_log.end
    reg = profile.register(point)
    if not reg.access.readable:
        raise ProfileError(f"{point} is write-only in profile {profile.name!r}")
    return reg.block, reg.address, reg.end


def _default_points(profile: Profile) -> list[Point]:
    points: list[Point] = [reg.point for reg in profile.registers if reg.access.readable]
    if profile.event_log is not None:
        points.append(Prepaid.EVENT_LOG)
    return points


# The prepaid state a head-end polls with every reading (identity and the event log are
# read at commissioning and when the event count moves).
_ROUTINE_PREPAID = (
    Prepaid.RELAY_CLOSED,
    Prepaid.RELAY_REASON,
    Prepaid.TOKEN_RESULT,
    Prepaid.TOKEN_COUNT,
    Prepaid.POWER_LIMIT_W,
    Prepaid.EVENT_COUNT,
    Prepaid.METER_TIME,
)


def routine_points(profile: Profile) -> tuple[Point, ...]:
    """What a periodic poll reads: every measurand, and the prepaid state the profile has
    (relay state and reason, last token result and count, power limit, event count,
    meter clock; the
    relay actuator itself when the profile has no separate relay state register)."""
    points: list[Point] = list(profile.measurands)
    points.extend(p for p in _ROUTINE_PREPAID if profile.find(p) is not None)
    relay = profile.find(Prepaid.RELAY_COMMAND)
    if relay is not None and profile.find(Prepaid.RELAY_CLOSED) is None:
        points.append(Prepaid.RELAY_COMMAND)
    return tuple(points)


def plan_reads(profile: Profile, points: Iterable[Point] | None = None) -> tuple[ReadRequest, ...]:
    """The fewest contiguous reads that fetch ``points`` (default: every readable point).

    Neighbouring points share a request when the merged range stays within the
    profile's request-size limit and inside addresses the meter answers (so unused
    addresses in between do not trigger exception 2).

    Raises:
        ProfileError: a point is not in the profile, or is write-only.
    """
    ranges = sorted(
        {_point_range(profile, p) for p in (_default_points(profile) if points is None else points)}
    )
    limit = profile.max_registers_per_request
    plan: list[ReadRequest] = []
    current: tuple[Block, int, int] | None = None
    for block, start, end in ranges:
        if current is not None:
            c_block, c_start, c_end = current
            # Bit blocks are not size-limited by the register cap (2000 coils per FC01).
            merged_end = max(c_end, end)
            fits = block.is_bits or merged_end - c_start <= limit
            if block is c_block and fits and profile.answers(block, c_start, merged_end):
                current = (c_block, c_start, merged_end)
                continue
            plan.append(ReadRequest(c_block, c_start, c_end - c_start))
        current = (block, start, end)
    if current is not None:
        plan.append(ReadRequest(current[0], current[1], current[2] - current[1]))
    return tuple(plan)


def _slice(request: ReadRequest, reg: Register, data: Sequence[int]) -> Sequence[int]:
    offset = reg.address - request.address
    return data[offset : offset + reg.count]


def _check_reply(request: ReadRequest, data: Sequence[int] | Sequence[bool]) -> None:
    if request.block.is_bits:
        # Clients pad coil replies to whole bytes; only the first ``count`` bits count.
        if len(data) < request.count:
            raise CodecError(f"expected {request.count} bits, got {len(data)}")
    else:
        check_registers([int(word) for word in data], request.count)


def decode_points(
    profile: Profile, request: ReadRequest, data: Sequence[int] | Sequence[bool]
) -> dict[Point, PointValue]:
    """Decode every readable point wholly inside ``request`` from its reply ``data``.

    ``data`` is the reply's registers (FC03/FC04) or bits (FC01/FC02). Numbers come back
    as exact Decimals (float32 values as the exact value of the binary32), text as str.
    The event log is decoded by ``decode_event_log``, not here.

    Raises:
        CodecError: the reply has the wrong length or holds an invalid value.
    """
    _check_reply(request, data)
    values: dict[Point, PointValue] = {}
    for reg in profile.registers:
        if (
            reg.block is not request.block
            or not reg.access.readable
            or reg.address < request.address
            or reg.end > request.end
        ):
            continue
        if reg.codec is None:
            values[reg.point] = Decimal(int(bool(data[reg.address - request.address])))
        elif isinstance(reg.codec, Ascii):
            values[reg.point] = reg.codec.decode_text(_slice(request, reg, data))
        else:
            values[reg.point] = reg.codec.decode(_slice(request, reg, data))
    return values


def decode_readings(
    profile: Profile, replies: Iterable[tuple[ReadRequest, Sequence[int] | Sequence[bool]]]
) -> dict[Measurand, Decimal]:
    """Measured values from several replies, each rounded half-even to its quantity's
    stored resolution (``Quantity.info.decimals``), which also trims float32 noise.

    Raises:
        CodecError: a reply has the wrong length or holds an invalid value.
    """
    readings: dict[Measurand, Decimal] = {}
    for request, data in replies:
        for point, value in decode_points(profile, request, data).items():
            if isinstance(point, Measurand) and isinstance(value, Decimal):
                step = Decimal(1).scaleb(-point.quantity.info.decimals)
                readings[point] = value.quantize(step, rounding=ROUND_HALF_EVEN)
    return readings


def meter_totals(readings: dict[Measurand, Decimal]) -> dict[Quantity, Decimal]:
    """The whole-meter values (``phase is None``) of ``readings``, keyed by Quantity."""
    return {m.quantity: v for m, v in readings.items() if m.phase is None}


def decode_event_log(
    profile: Profile, request: ReadRequest, data: Sequence[int]
) -> list[EventRecord]:
    """The events in a reply that covers the whole event log, newest first.

    Raises:
        ProfileError: the profile has no event log.
        CodecError: the request does not cover exactly the log, or a record is malformed.
    """
    log = profile.event_log
    if log is None:
        raise ProfileError(f"profile {profile.name!r} has no event log")
    if request.block is not Block.HOLDING or not (
        request.address <= log.address and log.end <= request.end
    ):
        raise CodecError("the request does not cover the event log")
    check_registers(data, request.count)
    offset = log.address - request.address
    return log.decode(data[offset : offset + log.count])


def relay_write(profile: Profile, closed: bool) -> WriteRequest:
    """The write that closes (supply on) or opens the relay, with the profile's actuator.

    Raises:
        ProfileError: the meter has no relay.
    """
    reg = profile.find(Prepaid.RELAY_COMMAND)
    if profile.relay_actuator is RelayActuator.NONE or reg is None:
        raise ProfileError(f"profile {profile.name!r} has no relay")
    if profile.relay_actuator is RelayActuator.COIL:
        return WriteRequest(5, reg.address, bits=(closed,))
    assert reg.codec is not None and not isinstance(reg.codec, Ascii)
    return WriteRequest(16, reg.address, registers=tuple(reg.codec.encode(Decimal(int(closed)))))


def power_limit_write(profile: Profile, power_limit_w: Decimal) -> WriteRequest:
    """The FC16 write that sets the power limit in W (0 removes the limit).

    Raises:
        ProfileError: the profile has no power limit register.
        CodecError: the value does not fit the register.
    """
    reg = profile.register(Prepaid.POWER_LIMIT_W)
    if power_limit_w < 0:
        raise CodecError("power limit must not be negative")
    assert reg.codec is not None and not isinstance(reg.codec, Ascii)
    return WriteRequest(16, reg.address, registers=tuple(reg.codec.encode(power_limit_w)))


def clock_write(profile: Profile, meter_time: datetime) -> WriteRequest:
    """The FC16 write that sets the meter's clock to ``meter_time`` (whole seconds, UTC).

    Raises:
        ProfileError: the profile has no clock register.
        CodecError: ``meter_time`` is naive or outside the UINT32 Unix-seconds range.
    """
    reg = profile.register(Prepaid.METER_TIME)
    if meter_time.tzinfo is None or meter_time.utcoffset() is None:
        raise CodecError("meter time must be timezone-aware")
    assert reg.codec is not None and not isinstance(reg.codec, Ascii)
    seconds = Decimal(int(meter_time.timestamp()))
    return WriteRequest(16, reg.address, registers=tuple(reg.codec.encode(seconds)))


def meter_time(value: Decimal) -> datetime:
    """The meter clock register's value (Unix seconds) as an aware UTC datetime."""
    return datetime.fromtimestamp(int(value), tz=UTC)


def token_write(profile: Profile, digits: str) -> WriteRequest:
    """The FC16 write that types a 20-digit token into the meter's keypad registers.

    Raises:
        ProfileError: the profile has no token entry.
        CodecError: ``digits`` is not exactly 20 decimal digits.
    """
    reg = profile.register(Prepaid.TOKEN_ENTRY)
    if len(digits) != 20 or not digits.isascii() or not digits.isdigit():
        raise CodecError("a token is exactly 20 decimal digits")
    assert isinstance(reg.codec, Ascii)
    return WriteRequest(16, reg.address, registers=tuple(reg.codec.encode_text(digits)))
