"""What each command takes and how its effect is recognised on the meter (pure functions).

Parameters match the wire contract of :class:`protocols.mqtt.Command`:

- ``connect`` / ``disconnect``: none.
- ``set_power_limit``: ``watts``, an integer 0..1,000,000 (0 removes the limit).
- ``push_token``: ``token``, 20 decimal digits (spaces and dashes as printed are removed).
- ``read_now``: none.
- ``set_clock``: optional ``time`` (ISO 8601 with a UTC offset); without it the head-end's
  own UTC time at the moment of sending is used, so a command that waited in the queue
  does not set a stale time.

A meter's relay and power limit are read back from the ``result`` of a ``read_now``
reply: ``relay_closed`` (bool) and ``power_limit_w`` (int; absent when no limit is set).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from protocols.mqtt import CommandName

MAX_POWER_LIMIT_W = 1_000_000
TOKEN_DIGITS = 20

ParamValue = str | int | bool

# Commands whose effect is checked by reading the meter back before they are confirmed.
READBACK_COMMANDS = frozenset(
    {CommandName.CONNECT, CommandName.DISCONNECT, CommandName.SET_POWER_LIMIT}
)
# Commands that change what a customer gets: every one is written to the audit log.
AUDITED_COMMANDS = frozenset(
    {
        CommandName.CONNECT,
        CommandName.DISCONNECT,
        CommandName.SET_POWER_LIMIT,
        CommandName.PUSH_TOKEN,
    }
)


class CommandError(ValueError):
    """A command request is refused; ``code`` is stable and machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def parse_name(name: CommandName | str) -> CommandName:
    """The command name as an enum; CommandError("unknown_command") otherwise."""
    try:
        return CommandName(name)
    except ValueError:
        known = ", ".join(n.value for n in CommandName)
        raise CommandError(
            "unknown_command", f"unknown command {name!r}; one of: {known}"
        ) from None


def validate_params(name: CommandName, params: Mapping[str, object]) -> dict[str, ParamValue]:
    """The parameters, checked and normalised; CommandError("invalid_params") otherwise."""
    allowed = _ALLOWED[name]
    unknown = sorted(set(params) - allowed)
    if unknown:
        expected = ", ".join(sorted(allowed)) or "none"
        raise CommandError(
            "invalid_params",
            f"{name.value} does not take {', '.join(unknown)}; parameters: {expected}",
        )
    if name is CommandName.SET_POWER_LIMIT:
        watts = params.get("watts")
        if isinstance(watts, bool) or not isinstance(watts, int):
            raise CommandError(
                "invalid_params", "set_power_limit needs 'watts' as an integer (0 removes it)"
            )
        if not 0 <= watts <= MAX_POWER_LIMIT_W:
            raise CommandError(
                "invalid_params", f"'watts' must be 0..{MAX_POWER_LIMIT_W}, got {watts}"
            )
        return {"watts": watts}
    if name is CommandName.PUSH_TOKEN:
        token = params.get("token")
        if not isinstance(token, str):
            raise CommandError("invalid_params", "push_token needs 'token' as a string")
        digits = token.replace(" ", "").replace("-", "")
        if len(digits) != TOKEN_DIGITS or not (digits.isascii() and digits.isdigit()):
            raise CommandError("invalid_params", f"'token' must be {TOKEN_DIGITS} decimal digits")
        return {"token": digits}
    if name is CommandName.SET_CLOCK and "time" in params:
        raw = params["time"]
        moment = None
        if isinstance(raw, str):
            try:
                moment = datetime.fromisoformat(raw)
            except ValueError:
                moment = None
        if moment is None or moment.tzinfo is None:
            raise CommandError(
                "invalid_params",
                "'time' must be ISO 8601 with a UTC offset, e.g. 2026-11-24T08:00Z",
            )
        return {"time": moment.isoformat()}
    return {}


_ALLOWED: dict[CommandName, frozenset[str]] = {
    CommandName.CONNECT: frozenset(),
    CommandName.DISCONNECT: frozenset(),
    CommandName.SET_POWER_LIMIT: frozenset({"watts"}),
    CommandName.PUSH_TOKEN: frozenset({"token"}),
    CommandName.READ_NOW: frozenset(),
    CommandName.SET_CLOCK: frozenset({"time"}),
}


def wire_params(
    name: CommandName, params: Mapping[str, ParamValue], now: datetime
) -> dict[str, ParamValue]:
    """The parameters as sent at ``now`` (a time sync without a time gets ``now``)."""
    if name is CommandName.SET_CLOCK and "time" not in params:
        return {"time": now.isoformat()}
    return dict(params)


def mask_params(name: CommandName | str, params: Mapping[str, ParamValue]) -> dict[str, ParamValue]:
    """The parameters as shown to people and the audit log: a token keeps its last 4 digits."""
    shown = dict(params)
    token = shown.get("token")
    if name == CommandName.PUSH_TOKEN and isinstance(token, str):
        shown["token"] = "*" * (len(token) - 4) + token[-4:]
    return shown


@dataclass(frozen=True, slots=True)
class ControlSnapshot:
    """The relay and power limit as last read back (``power_limit_w`` None: no limit)."""

    relay_closed: bool | None
    power_limit_w: int | None


def readback_mismatch(
    name: CommandName, params: Mapping[str, ParamValue], result: Mapping[str, object]
) -> str | None:
    """None when a read-back ``result`` shows the command's effect, else what it shows."""
    if name in (CommandName.CONNECT, CommandName.DISCONNECT):
        relay_closed = result.get("relay_closed")
        if not isinstance(relay_closed, bool):
            return "the read-back does not report the relay state"
        wanted = name is CommandName.CONNECT
        if relay_closed is wanted:
            return None
        return f"relay is {'closed' if relay_closed else 'open'}"
    if name is CommandName.SET_POWER_LIMIT:
        limit = result.get("power_limit_w")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
            return f"the read-back reports an unreadable power limit {limit!r}"
        wanted_limit = params["watts"] or None
        if limit == wanted_limit:
            return None
        return f"power limit is {'none' if limit is None else f'{limit} W'}"
    return None


def snapshot_from_readback(result: Mapping[str, object]) -> ControlSnapshot | None:
    """The relay and limit a ``read_now`` result reports; None if it has no relay state."""
    relay_closed = result.get("relay_closed")
    if not isinstance(relay_closed, bool):
        return None
    limit = result.get("power_limit_w")
    if isinstance(limit, bool) or not isinstance(limit, int):
        limit = None
    return ControlSnapshot(relay_closed, limit)


def already_satisfied(
    name: CommandName, params: Mapping[str, ParamValue], known: ControlSnapshot
) -> bool:
    """Whether the last known meter state already is what the command asks for."""
    if name not in READBACK_COMMANDS:
        return False
    result: dict[str, object] = {"relay_closed": known.relay_closed}
    if known.power_limit_w is not None:
        result["power_limit_w"] = known.power_limit_w
    return readback_mismatch(name, params, result) is None
