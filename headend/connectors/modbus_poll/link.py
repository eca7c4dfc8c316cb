"""One open Modbus connection for one channel (TCP gateway or serial line).

A thin adapter over the pymodbus async clients that turns every way a request can
fail into a :class:`PollFailure` with its reason. pymodbus's own retries are off
(``retries=0``): the poller retries with its own backoff, and records each failure.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ExceptionResponse, ModbusPDU

from headend.connectors.modbus_poll.failures import FailureReason, PollFailure
from headend.connectors.modbus_poll.targets import RtuTransport, TcpTransport, Transport
from protocols.modbus import Block, ReadRequest

__all__ = ["ModbusLink"]


class ModbusLink:
    """A lazily (re)connected client for one channel. Not safe for concurrent use: the
    channel worker holds its lock around every request, one request in flight."""

    def __init__(self, transport: Transport, *, timeout_s: float) -> None:
        """Raise ValueError if ``timeout_s`` is not positive."""
        if not timeout_s > 0:
            raise ValueError("timeout_s must be positive")
        self._transport = transport
        self._timeout_s = timeout_s
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        # Bytes that arrived since the last request was sent: tells a spoiled frame
        # (CRC, framing) from silence when pymodbus reports "no response".
        self._received = bytearray()
        self.requests = 0

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if sending:
            self._received.clear()
        else:
            self._received[:] = data
        return data

    def _new_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        transport = self._transport
        if isinstance(transport, TcpTransport):
            return AsyncModbusTcpClient(
                transport.host,
                port=transport.port,
                framer=FramerType.RTU if transport.framer == "rtu" else FramerType.SOCKET,
                timeout=self._timeout_s,
                retries=0,
                reconnect_delay=0,
                trace_packet=self._trace_packet,
            )
        assert isinstance(transport, RtuTransport)
        return AsyncModbusSerialClient(
            transport.port,
            framer=FramerType.RTU,
            baudrate=transport.baudrate,
            parity=transport.parity,
            stopbits=transport.stopbits,
            bytesize=8,
            timeout=self._timeout_s,
            retries=0,
            reconnect_delay=0,
            trace_packet=self._trace_packet,
        )

    async def open(self) -> None:
        """Connect if not connected.

        Raises:
            PollFailure: CONNECTION_REFUSED or CONNECT_FAILED.
        """
        if self.connected:
            return
        self.close()
        client = self._new_client()
        if await client.connect():
            self._client = client
            return
        client.close()
        raise await self._diagnose_connect_failure()

    async def _diagnose_connect_failure(self) -> PollFailure:
        """pymodbus only says False; one plain connect tells refused from unreachable."""
        transport = self._transport
        if isinstance(transport, RtuTransport):
            return PollFailure(
                FailureReason.CONNECT_FAILED, f"cannot open serial port {transport.port}"
            )
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(transport.host, transport.port), self._timeout_s
            )
        except ConnectionRefusedError:
            return PollFailure(
                FailureReason.CONNECTION_REFUSED, f"{transport.host}:{transport.port} refused"
            )
        except (TimeoutError, OSError) as exc:
            return PollFailure(
                FailureReason.CONNECT_FAILED,
                f"{transport.host}:{transport.port}: {exc.__class__.__name__} {exc}".strip(),
            )
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return PollFailure(
            FailureReason.CONNECT_FAILED, f"{transport.host}:{transport.port}: connect failed"
        )

    async def connected_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        """The connected client, for exchanges that are not reads (the caller holds the
        channel's lock). Raises PollFailure as :meth:`open`."""
        await self.open()
        assert self._client is not None
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def read(self, unit_id: int, request: ReadRequest) -> Sequence[int] | Sequence[bool]:
        """Send one read and return the registers (FC03/FC04) or bits (FC01/FC02).

        Raises:
            PollFailure: TIMEOUT, FRAME_ERROR, MODBUS_EXCEPTION (with the code),
                CONNECTION_LOST, CONNECTION_REFUSED / CONNECT_FAILED (reconnecting).
        """
        await self.open()
        client = self._client
        assert client is not None
        self.requests += 1
        try:
            reply = await self._send(client, unit_id, request)
        except ModbusIOException as exc:
            if self._received:
                received = bytes(self._received)
                self._received.clear()
                raise PollFailure(
                    FailureReason.FRAME_ERROR,
                    f"unit {unit_id}: {len(received)} bytes with no valid frame "
                    f"({received[:16].hex()})",
                ) from None
            if "device id" in str(exc) or "transaction id" in str(exc):
                raise PollFailure(FailureReason.FRAME_ERROR, f"unit {unit_id}: {exc}") from None
            raise PollFailure(
                FailureReason.TIMEOUT, f"unit {unit_id}: no reply within {self._timeout_s} s"
            ) from None
        except ConnectionException as exc:
            self.close()
            raise PollFailure(FailureReason.CONNECTION_LOST, str(exc)) from None
        except ModbusException as exc:
            raise PollFailure(FailureReason.FRAME_ERROR, f"unit {unit_id}: {exc}") from None
        if isinstance(reply, ExceptionResponse) or reply.isError():
            code = getattr(reply, "exception_code", None)
            raise PollFailure(
                FailureReason.MODBUS_EXCEPTION,
                f"unit {unit_id} answered FC{request.function_code} "
                f"@{request.address:#06x} with exception {code}",
                exception_code=None if code is None else int(code),
            )
        if request.block.is_bits:
            return list(reply.bits)
        return list(reply.registers)

    @staticmethod
    async def _send(
        client: AsyncModbusTcpClient | AsyncModbusSerialClient, unit_id: int, request: ReadRequest
    ) -> ModbusPDU:
        address, count = request.address, request.count
        match request.block:
            case Block.INPUT:
                return await client.read_input_registers(address, count=count, device_id=unit_id)
            case Block.HOLDING:
                return await client.read_holding_registers(address, count=count, device_id=unit_id)
            case Block.COIL:
                return await client.read_coils(address, count=count, device_id=unit_id)
            case Block.DISCRETE_INPUT:
                return await client.read_discrete_inputs(address, count=count, device_id=unit_id)
        raise PollFailure(FailureReason.BAD_REPLY, f"cannot read block {request.block}")
