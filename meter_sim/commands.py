"""Head-end commands applied to a meter model, sans-IO.

One function, :func:`execute_command`, turns a parsed :class:`protocols.mqtt.Command` into
changes on a :class:`MeterModel` and the :class:`protocols.mqtt.CommandReply` to send
back. A command with a bad parameter gets an error reply and changes nothing.

Parameters per command (all in ``params``):

- ``connect`` / ``disconnect``: none.
- ``set_power_limit``: ``watts`` (int, 1..1000000; 0 removes the limit).
- ``push_token``: ``token`` (20 decimal digits).
- ``read_now``: none (the transport also publishes a telemetry report).
- ``set_clock``: ``time`` (ISO 8601 with a UTC offset): sets the meter's own clock.
"""

from __future__ import annotations

from datetime import datetime

from meter_sim.model import MeterError, MeterModel, TokenStatus
from protocols.mqtt import Command, CommandName, CommandReply, ReplyStatus

_ALLOWED_PARAMS: dict[CommandName, frozenset[str]] = {
    CommandName.CONNECT: frozenset(),
    CommandName.DISCONNECT: frozenset(),
    CommandName.SET_POWER_LIMIT: frozenset({"watts"}),
    CommandName.PUSH_TOKEN: frozenset({"token"}),
    CommandName.READ_NOW: frozenset(),
    CommandName.SET_CLOCK: frozenset({"time"}),
}


class _BadParams(ValueError):
    pass


def _state(model: MeterModel) -> dict[str, str | int | bool]:
    state: dict[str, str | int | bool] = {
        "relay_closed": model.relay_closed,
        "relay_reason": model.relay_reason.value,
        "meter_time": model.meter_time.isoformat(),
    }
    if model.credit_kwh is not None:
        state["credit_kwh"] = str(model.credit_kwh)
    state["energy_import_kwh"] = str(model.energy_import_kwh)
    if model.power_limit_w is not None:
        state["power_limit_w"] = model.power_limit_w
    return state


def error_reply(command_id: str, meter_id: str, reason: str, ts: datetime) -> CommandReply:
    """An error reply carrying ``reason``."""
    return CommandReply(
        id=command_id, meter_id=meter_id, status=ReplyStatus.ERROR, reason=reason, ts=ts
    )


def execute_command(model: MeterModel, command: Command, now: datetime) -> CommandReply:
    """Advance ``model`` to simulated time ``now``, apply ``command`` and return the reply.

    Never raises for a bad command: unknown parameters, wrong types, out-of-range
    values and commands the meter refuses in its state give a reply with status
    ``error`` and a reason, and leave the meter as it was.
    """
    model.advance(now)
    meter_id = model.config.serial
    ts = model.meter_time
    try:
        result = _apply(model, command)
    except (_BadParams, MeterError) as exc:
        return error_reply(command.id, meter_id, str(exc), ts)
    status = ReplyStatus.OK
    reason = None
    token_status = result.get("token_status")
    if token_status is not None and token_status not in (
        TokenStatus.ACCEPT.value,
        TokenStatus.KEY_CHANGE_1ST.value,
    ):
        status = ReplyStatus.ERROR
        reason = f"token {token_status}: {result.get('token_reason', '')}".rstrip(": ")
    return CommandReply(
        id=command.id,
        meter_id=meter_id,
        status=status,
        reason=reason,
        result={**result, **_state(model)},
        ts=model.meter_time,
    )


def _apply(model: MeterModel, command: Command) -> dict[str, str | int | bool]:
    params = command.params
    unknown = sorted(set(params) - _ALLOWED_PARAMS[command.name])
    if unknown:
        raise _BadParams(f"unknown parameter(s) for {command.name.value}: {', '.join(unknown)}")
    name = command.name
    if name is CommandName.CONNECT:
        model.set_relay(True)
        return {}
    if name is CommandName.DISCONNECT:
        model.set_relay(False)
        return {}
    if name is CommandName.SET_POWER_LIMIT:
        watts = params.get("watts")
        if isinstance(watts, bool) or not isinstance(watts, int):
            raise _BadParams("set_power_limit needs an integer 'watts' (0 removes the limit)")
        model.set_power_limit(None if watts == 0 else watts)
        return {}
    if name is CommandName.PUSH_TOKEN:
        token = params.get("token")
        if not isinstance(token, str):
            raise _BadParams("push_token needs 'token' as a string of 20 digits")
        outcome = model.enter_token(token, model.now)
        out: dict[str, str | int | bool] = {"token_status": outcome.status.value}
        if outcome.reason:
            out["token_reason"] = outcome.reason
        if outcome.credit_added_kwh is not None:
            out["credit_added_kwh"] = str(outcome.credit_added_kwh)
        if outcome.tid is not None:
            out["tid"] = outcome.tid
        return out
    if name is CommandName.READ_NOW:
        return {
            f"value.{quantity.value}": str(value)
            for quantity, value in model.measurements().items()
        }
    if name is CommandName.SET_CLOCK:
        raw = params.get("time")
        if not isinstance(raw, str):
            raise _BadParams("set_clock needs 'time' as an ISO 8601 string with an offset")
        try:
            moment = datetime.fromisoformat(raw)
        except ValueError:
            raise _BadParams(f"set_clock 'time' is not ISO 8601: {raw!r}") from None
        model.set_clock(moment)
        return {}
    raise _BadParams(f"unsupported command {name.value}")  # pragma: no cover - enum is closed
