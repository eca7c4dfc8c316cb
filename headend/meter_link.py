"""Talking to one meter during commissioning: the ``MeterLink`` interface and its Modbus form.

The commissioning workflow is written against ``MeterLink`` only, so it runs unchanged
over Modbus TCP, Modbus RTU or MQTT (``headend.meter_link_mqtt``). A link raises
``MeterLinkError`` when the meter does not answer or answers with an error, and
``NotSupported`` when the meter has no such function (no relay, no clock register).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from pymodbus import ModbusException
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient

from protocols.modbus import (
    Block,
    CodecError,
    Measurand,
    Prepaid,
    Profile,
    ProfileError,
    ReadRequest,
    TokenResult,
    WriteRequest,
    clock_write,
    decode_points,
    decode_readings,
    get_profile,
    meter_time,
    plan_reads,
    power_limit_write,
    relay_write,
    token_write,
)
from protocols.quantities import Quantity


class MeterLinkError(Exception):
    """The meter did not answer, or answered with an error; the message says which."""


class MeterRefused(MeterLinkError):
    """The meter answered with a Modbus exception: it heard the request and said no."""


class NotSupported(MeterLinkError):
    """The meter has no such function (for example no relay or no settable clock)."""


@dataclass(frozen=True, slots=True)
class Nameplate:
    """What a meter says about itself. ``None`` means the meter does not report it.

    ``numeric_serial`` is for meters that only carry a number (Eastron's UINT32 serial).
    """

    serial: str | None = None
    numeric_serial: int | None = None
    meter_number: str | None = None
    phases: int | None = None
    model: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "serial": self.serial,
            "numeric_serial": self.numeric_serial,
            "meter_number": self.meter_number,
            "phases": self.phases,
            "model": self.model,
        }


class MeterLink(Protocol):
    """The meter I/O commissioning needs. Every method raises ``MeterLinkError`` (or its
    subclass ``NotSupported``) rather than transport-specific errors."""

    async def read_nameplate(self) -> Nameplate:
        """The meter's identity as it reports it."""
        ...

    async def read_register(self, quantity: Quantity) -> Decimal:
        """A whole-meter value in the quantity's unit (kWh, V, A, W ...)."""
        ...

    async def set_relay(self, closed: bool) -> None:
        """Close (supply on) or open the supply relay."""
        ...

    async def read_relay(self) -> bool:
        """True when the relay is closed (supply on)."""
        ...

    async def read_clock(self) -> datetime:
        """The meter's own clock, as an aware UTC time."""
        ...

    async def set_clock(self, now: datetime) -> None:
        """Set the meter's clock to the aware UTC time ``now``."""
        ...

    async def enter_token(self, digits: str) -> str:
        """Enter a 20-digit STS token as if typed on the keypad; return the meter's answer
        in lower case: ``accept``, ``key_change_1st`` (a key change section buffered),
        ``used``, ``old``, ``key_expired``, ``error``, ``reject`` or ``not_supported``."""
        ...


class ModbusMeterLink:
    """A ``MeterLink`` over a connected pymodbus async client (TCP or RTU).

    Reads and writes are planned and decoded by ``protocols.modbus`` from the meter's
    profile; this class only moves the registers.
    """

    def __init__(
        self,
        client: AsyncModbusTcpClient | AsyncModbusSerialClient,
        profile: Profile,
        unit: int,
    ) -> None:
        self._client = client
        self._profile = profile
        self._unit = unit

    @property
    def profile(self) -> Profile:
        return self._profile

    async def _read(self, request: ReadRequest) -> Sequence[int] | Sequence[bool]:
        client, unit = self._client, self._unit
        try:
            if request.block is Block.COIL:
                reply = await client.read_coils(
                    request.address, count=request.count, device_id=unit
                )
            elif request.block is Block.DISCRETE_INPUT:
                reply = await client.read_discrete_inputs(
                    request.address, count=request.count, device_id=unit
                )
            elif request.block is Block.HOLDING:
                reply = await client.read_holding_registers(
                    request.address, count=request.count, device_id=unit
                )
            else:
                reply = await client.read_input_registers(
                    request.address, count=request.count, device_id=unit
                )
        except ModbusException as exc:
            raise MeterLinkError(f"no answer from unit {unit}: {exc}") from None
        if reply.isError():
            code = getattr(reply, "exception_code", "?")
            raise MeterRefused(
                f"unit {unit} answered FC{request.function_code} at {request.address} "
                f"with Modbus exception {code}"
            )
        return reply.bits if request.block.is_bits else reply.registers

    async def _write(self, request: WriteRequest) -> None:
        client, unit = self._client, self._unit
        try:
            if request.function_code == 5:
                reply = await client.write_coil(request.address, request.bits[0], device_id=unit)
            else:
                reply = await client.write_registers(
                    request.address, list(request.registers), device_id=unit
                )
        except ModbusException as exc:
            raise MeterLinkError(f"no answer from unit {unit}: {exc}") from None
        if reply.isError():
            code = getattr(reply, "exception_code", "?")
            raise MeterRefused(
                f"unit {unit} refused FC{request.function_code} at {request.address} "
                f"with Modbus exception {code}"
            )

    async def _points(self, points: Sequence[Prepaid | Measurand]) -> dict[Any, Any]:
        values: dict[Any, Any] = {}
        for request in plan_reads(self._profile, points):
            data = await self._read(request)
            try:
                values.update(decode_points(self._profile, request, data))
            except CodecError as exc:
                raise MeterLinkError(f"unit {self._unit} sent an invalid value: {exc}") from None
        return values

    async def read_nameplate(self) -> Nameplate:
        wanted = [
            p
            for p in (Prepaid.METER_SERIAL, Prepaid.METER_NUMBER, Prepaid.SERIAL_NUMBER)
            if self._profile.find(p) is not None
        ]
        values = await self._points(wanted)
        numeric = values.get(Prepaid.SERIAL_NUMBER)
        serial = values.get(Prepaid.METER_SERIAL)
        number = values.get(Prepaid.METER_NUMBER)
        return Nameplate(
            serial=str(serial) if serial else None,
            numeric_serial=int(numeric) if numeric is not None else None,
            meter_number=str(number) if number else None,
            phases=self._profile.phases,
            model=self._profile.name,
        )

    async def read_register(self, quantity: Quantity) -> Decimal:
        point = Measurand(quantity)
        if self._profile.find(point) is None:
            raise NotSupported(f"profile {self._profile.name} has no {quantity.value} register")
        replies = []
        for request in plan_reads(self._profile, [point]):
            replies.append((request, await self._read(request)))
        try:
            readings = decode_readings(self._profile, replies)
        except CodecError as exc:
            raise MeterLinkError(f"unit {self._unit} sent an invalid value: {exc}") from None
        return readings[point]

    async def set_relay(self, closed: bool) -> None:
        try:
            request = relay_write(self._profile, closed)
        except ProfileError as exc:
            raise NotSupported(str(exc)) from None
        await self._write(request)

    async def read_relay(self) -> bool:
        for point in (Prepaid.RELAY_CLOSED, Prepaid.RELAY_COMMAND):
            if self._profile.find(point) is not None:
                values = await self._points([point])
                return bool(values[point])
        raise NotSupported(f"profile {self._profile.name} has no relay state")

    async def set_power_limit(self, watts: int) -> None:
        """Limit the supply to ``watts`` (0 removes the limit)."""
        try:
            request = power_limit_write(self._profile, Decimal(watts))
        except ProfileError:
            raise NotSupported(f"profile {self._profile.name} has no power limit") from None
        except CodecError as exc:
            raise MeterLinkError(str(exc)) from None
        await self._write(request)

    async def read_power_limit(self) -> int | None:
        """The power limit in W, None when there is none (or the meter has no limit)."""
        if self._profile.find(Prepaid.POWER_LIMIT_W) is None:
            return None
        value = (await self._points([Prepaid.POWER_LIMIT_W]))[Prepaid.POWER_LIMIT_W]
        return int(value) or None

    async def read_clock(self) -> datetime:
        if self._profile.find(Prepaid.METER_TIME) is None:
            raise NotSupported(f"profile {self._profile.name} has no clock register")
        values = await self._points([Prepaid.METER_TIME])
        return meter_time(values[Prepaid.METER_TIME])

    async def set_clock(self, now: datetime) -> None:
        try:
            request = clock_write(self._profile, now)
        except ProfileError:
            raise NotSupported(f"profile {self._profile.name} has no clock register") from None
        except CodecError as exc:
            raise MeterLinkError(str(exc)) from None
        await self._write(request)

    async def enter_token(self, digits: str) -> str:
        try:
            request = token_write(self._profile, digits)
        except ProfileError as exc:
            raise NotSupported(str(exc)) from None
        except CodecError as exc:
            raise MeterLinkError(str(exc)) from None
        points = [Prepaid.TOKEN_RESULT, Prepaid.TOKEN_COUNT]
        before = (await self._points(points))[Prepaid.TOKEN_COUNT]
        await self._write(request)
        after = await self._points(points)
        if after[Prepaid.TOKEN_COUNT] == before:
            raise MeterLinkError(f"unit {self._unit} did not count the token as entered")
        code = int(after[Prepaid.TOKEN_RESULT])
        try:
            return TokenResult(code).name.lower()
        except ValueError:
            return f"code_{code}"


@asynccontextmanager
async def modbus_tcp_link(
    host: str,
    port: int,
    unit: int,
    profile: str | Profile,
    *,
    timeout_s: float = 3.0,
    retries: int = 1,
) -> AsyncIterator[ModbusMeterLink]:
    """A connected link to a Modbus TCP meter (or a meter behind a TCP gateway).

    Raises:
        MeterLinkError: the connection cannot be made.
        ProfileError: unknown profile name.
    """
    chosen = get_profile(profile) if isinstance(profile, str) else profile
    client = AsyncModbusTcpClient(host, port=port, timeout=timeout_s, retries=retries)
    try:
        if not await client.connect():
            raise MeterLinkError(f"cannot connect to {host}:{port}")
        yield ModbusMeterLink(client, chosen, unit)
    finally:
        client.close()


@asynccontextmanager
async def modbus_rtu_link(
    port: str,
    unit: int,
    profile: str | Profile,
    *,
    baudrate: int = 9600,
    parity: str = "N",
    timeout_s: float = 3.0,
    retries: int = 1,
) -> AsyncIterator[ModbusMeterLink]:
    """A connected link to a meter on an RS-485 line (``port`` as pyserial takes it).

    Raises:
        MeterLinkError: the serial port cannot be opened.
        ProfileError: unknown profile name.
    """
    chosen = get_profile(profile) if isinstance(profile, str) else profile
    client = AsyncModbusSerialClient(
        port, baudrate=baudrate, parity=parity, timeout=timeout_s, retries=retries
    )
    try:
        if not await client.connect():
            raise MeterLinkError(f"cannot open serial port {port}")
        yield ModbusMeterLink(client, chosen, unit)
    finally:
        client.close()
