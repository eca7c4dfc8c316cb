"""What to poll: a meter, its Modbus profile and unit id, and the transport that reaches it.

Meters sharing a transport share a *channel*: one TCP gateway (host, port) or one serial
line (RS-485 port). A channel carries one request at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from protocols.modbus import Profile, ProfileError, get_profile

__all__ = [
    "REGISTRY_FIELDS",
    "PollTarget",
    "RtuTransport",
    "TargetError",
    "TcpTransport",
    "target_from_registry",
    "targets_from_registry",
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


# The registry (headend.models.Meter) columns the poller reads, besides id and protocol.
REGISTRY_FIELDS = (
    "modbus_profile",
    "modbus_unit",
    "modbus_host",
    "modbus_port",
    "rtu_port",
    "rtu_baud",
    "rtu_parity",
)


def target_from_registry(
    *,
    meter_id: int,
    protocol: str,
    modbus_profile: str | None,
    modbus_unit: int | None,
    modbus_host: str | None = None,
    modbus_port: int | None = None,
    rtu_port: str | None = None,
    rtu_baud: int | None = None,
    rtu_parity: str | None = None,
    rtu_stopbits: int | None = None,
    tcp_framer: str = "socket",
) -> PollTarget:
    """Build a target from a registry row's plain values (the Meter columns of the same
    names).

    ``protocol`` is ``"modbus_tcp"`` (needs ``modbus_host``; port 502 unless given) or
    ``"modbus_rtu"`` (needs ``rtu_port``; 9600 baud, no parity, 1 stop bit unless given).

    Raises:
        TargetError: another protocol, a missing or invalid address or unit id, an
            unknown profile.
    """
    if not modbus_profile:
        raise TargetError(f"meter {meter_id}: no Modbus profile")
    if modbus_unit is None:
        raise TargetError(f"meter {meter_id}: no Modbus unit id")
    transport: Transport
    try:
        if protocol == "modbus_tcp":
            if not modbus_host:
                raise TargetError(f"meter {meter_id}: Modbus TCP needs a host")
            if tcp_framer not in ("socket", "rtu"):
                raise TargetError(f"meter {meter_id}: unknown TCP framer {tcp_framer!r}")
            transport = TcpTransport(
                modbus_host,
                502 if modbus_port is None else modbus_port,
                tcp_framer,  # type: ignore[arg-type]
            )
        elif protocol == "modbus_rtu":
            if not rtu_port:
                raise TargetError(f"meter {meter_id}: Modbus RTU needs a serial port")
            transport = RtuTransport(
                rtu_port,
                9600 if rtu_baud is None else rtu_baud,
                (rtu_parity or "N").upper(),  # type: ignore[arg-type]
                1 if rtu_stopbits is None else rtu_stopbits,  # type: ignore[arg-type]
            )
        else:
            raise TargetError(f"meter {meter_id}: protocol {protocol!r} is not polled over Modbus")
        return PollTarget(meter_id, modbus_profile, modbus_unit, transport)
    except TargetError as exc:
        message = str(exc)
        if not message.startswith(f"meter {meter_id}:"):
            message = f"meter {meter_id}: {message}"
        raise TargetError(message) from None


def targets_from_registry(
    rows: Iterable[Mapping[str, Any]],
) -> tuple[list[PollTarget], list[tuple[int, str]]]:
    """Targets for the Modbus rows among ``rows`` (mappings with ``id``, ``protocol`` and
    the :data:`REGISTRY_FIELDS`); rows of other protocols are ignored.

    Returns (targets, problems): a row that cannot be polled is reported as
    (meter id, reason) instead of stopping the others.
    """
    targets: list[PollTarget] = []
    problems: list[tuple[int, str]] = []
    for row in rows:
        if row.get("protocol") not in ("modbus_tcp", "modbus_rtu"):
            continue
        meter_id = int(row["id"])
        values: dict[str, Any] = {name: row.get(name) for name in REGISTRY_FIELDS}
        try:
            targets.append(
                target_from_registry(meter_id=meter_id, protocol=str(row["protocol"]), **values)
            )
        except TargetError as exc:
            problems.append((meter_id, str(exc)))
    return targets, problems
