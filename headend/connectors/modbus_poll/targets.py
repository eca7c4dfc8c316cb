"""What to poll: a meter, its Modbus profile and unit id, and the transport that reaches it.

Meters sharing a transport share a *channel*: one TCP gateway (host, port) or one serial
line (RS-485 port). A channel carries one request at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from protocols.modbus import Profile, ProfileError, get_profile

__all__ = [
    "PollTarget",
    "RtuTransport",
    "TargetError",
    "TcpTransport",
    "target_from_registry",
]

_PARITIES = frozenset({"N", "E", "O"})
_BAUD_RATES = frozenset({1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200})


class TargetError(ValueError):
    """A poll target's address or profile is invalid."""


@dataclass(frozen=True, slots=True)
class TcpTransport:
    """A Modbus TCP endpoint: a meter's own interface or an RS-485-to-TCP gateway.

    ``framer="rtu"`` sends RTU frames over TCP (a transparent serial converter).
    """

    host: str
    port: int = 502
    framer: Literal["socket", "rtu"] = "socket"

    def __post_init__(self) -> None:
        if not self.host:
            raise TargetError("a TCP transport needs a host")
        if not 1 <= self.port <= 65535:
            raise TargetError(f"TCP port must be 1..65535, not {self.port}")
        if self.framer not in ("socket", "rtu"):
            raise TargetError(f"TCP framer must be 'socket' or 'rtu', not {self.framer!r}")

    @property
    def channel(self) -> str:
        return f"tcp:{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class RtuTransport:
    """A Modbus RTU serial line (RS-485), 8 data bits."""

    port: str
    baudrate: int = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1

    def __post_init__(self) -> None:
        if not self.port:
            raise TargetError("an RTU transport needs a serial port")
        if self.baudrate not in _BAUD_RATES:
            raise TargetError(f"unsupported baud rate {self.baudrate}")
        if self.parity not in _PARITIES:
            raise TargetError(f"parity must be N, E or O, not {self.parity!r}")
        if self.stopbits not in (1, 2):
            raise TargetError(f"stop bits must be 1 or 2, not {self.stopbits}")

    @property
    def channel(self) -> str:
        return f"rtu:{self.port}"


Transport = TcpTransport | RtuTransport


@dataclass(frozen=True, slots=True)
class PollTarget:
    """One meter to poll: registry id, profile name, unit id (1..247) and transport."""

    meter_id: int
    profile: str
    unit_id: int
    transport: Transport

    def __post_init__(self) -> None:
        if self.meter_id < 1:
            raise TargetError(f"meter id must be positive, not {self.meter_id}")
        if not 1 <= self.unit_id <= 247:
            raise TargetError(f"unit id must be 1..247, not {self.unit_id}")
        try:
            get_profile(self.profile)
        except ProfileError as exc:
            raise TargetError(str(exc)) from None

    @property
    def channel(self) -> str:
        return self.transport.channel

    @property
    def modbus_profile(self) -> Profile:
        return get_profile(self.profile)


def target_from_registry(
    *,
    meter_id: int,
    protocol: str,
    profile: str,
    unit_id: int,
    host: str | None = None,
    tcp_port: int | None = None,
    tcp_framer: str = "socket",
    serial_port: str | None = None,
    baudrate: int | None = None,
    parity: str | None = None,
    stopbits: int | None = None,
) -> PollTarget:
    """Build a target from a registry row's plain values.

    ``protocol`` is ``"modbus_tcp"`` (needs ``host``; ``tcp_port`` defaults to 502) or
    ``"modbus_rtu"`` (needs ``serial_port``; 9600 8N1 unless given).

    Raises:
        TargetError: another protocol, a missing or invalid address, an unknown profile.
    """
    transport: Transport
    if protocol == "modbus_tcp":
        if not host:
            raise TargetError(f"meter {meter_id}: Modbus TCP needs a host")
        if tcp_framer not in ("socket", "rtu"):
            raise TargetError(f"meter {meter_id}: unknown TCP framer {tcp_framer!r}")
        transport = TcpTransport(host, 502 if tcp_port is None else tcp_port, tcp_framer)  # type: ignore[arg-type]
    elif protocol == "modbus_rtu":
        if not serial_port:
            raise TargetError(f"meter {meter_id}: Modbus RTU needs a serial port")
        parity_value = (parity or "N").upper()
        if parity_value not in _PARITIES:
            raise TargetError(f"meter {meter_id}: parity must be N, E or O, not {parity!r}")
        stop_value = 1 if stopbits is None else stopbits
        if stop_value not in (1, 2):
            raise TargetError(f"meter {meter_id}: stop bits must be 1 or 2, not {stopbits}")
        transport = RtuTransport(
            serial_port,
            9600 if baudrate is None else baudrate,
            parity_value,  # type: ignore[arg-type]
            stop_value,  # type: ignore[arg-type]
        )
    else:
        raise TargetError(f"meter {meter_id}: protocol {protocol!r} is not polled over Modbus")
    return PollTarget(meter_id, profile, unit_id, transport)
