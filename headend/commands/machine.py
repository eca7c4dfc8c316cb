"""The command state machine: pure transitions on a :class:`MeterCommand` row.

No database, no clock, no network: the caller passes the time, the last known meter state
and a random generator (for backoff jitter), applies the transition to the row, and sends
whatever :class:`WireMessage` comes back. ::

    queued/send ──send──▶ sent/await_reply ──ok reply──▶ sent/await_readback ──match──▶ confirmed
        ▲  │                     │ timeout                │ mismatch / ▲ timeout
        │  │ meter looks done    ▼                        ▼            │
        │  └──▶ sent/await_readback (verify only)   queued/send    sent/verify
        └──────────── retry after backoff ◀──────────────┘
    any open state ──expires_at passed──▶ expired;  refusal or retries used up ──▶ failed

Commands without a read-back (push_token, read_now, set_clock) are confirmed by the
meter's own ``ok`` reply. Every retry re-sends the same correlation id, so a meter that
already executed the command answers again rather than executing it twice.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime

from headend.commands.models import CommandState, CommandStep, Confirmation, MeterCommand
from headend.commands.policy import RetryPolicy
from headend.commands.spec import (
    READBACK_COMMANDS,
    ControlSnapshot,
    ParamValue,
    already_satisfied,
    readback_mismatch,
    wire_params,
)
from protocols.mqtt import CommandName, CommandReply, ReplyStatus

READBACK_MARK = ".r"


@dataclass(frozen=True, slots=True)
class WireMessage:
    """One message to put on the wire for a command.

    ``reply_deadline`` is when the head-end stops waiting for its reply (the broker may
    drop the message then: MQTT 5 message expiry needs no clock agreement). The meter
    ignores it after ``expires_at``: the deadline plus the policy's allowance for meter
    clocks, never later than the command's own expiry.
    """

    command_id: int
    wire_id: str
    name: CommandName
    params: dict[str, ParamValue]
    reply_deadline: datetime
    expires_at: datetime


class UnexpectedReply(Exception):
    """A reply that the command is not waiting for (late, duplicate or stale)."""


def readback_wire_id(correlation_id: str, number: int) -> str:
    return f"{correlation_id}{READBACK_MARK}{number}"


def split_wire_id(wire_id: str) -> tuple[str, int | None]:
    """``(correlation_id, read-back number or None)`` of an id seen on the wire."""
    base, mark, number = wire_id.rpartition(READBACK_MARK)
    if mark and base and number.isdigit() and number == str(int(number)):
        return base, int(number)
    return wire_id, None


def on_due(
    command: MeterCommand,
    now: datetime,
    policy: RetryPolicy,
    known: ControlSnapshot | None,
    rng: random.Random,
) -> WireMessage | None:
    """The command's ``next_action_at`` has come: expire, send, verify or time out."""
    if now >= command.expires_at:
        expire(command, now)
        return None
    step = CommandStep(command.step)
    name = CommandName(command.name)
    if step is CommandStep.SEND:
        first_try = command.attempts == 0 and command.readbacks == 0
        if first_try and known is not None and already_satisfied(name, command.params, known):
            # The meter looks done already: look before sending, never re-send blindly.
            command.verify_first = True
            return _send_readback(command, now, policy)
        return _send_command(command, now, policy)
    if step is CommandStep.AWAIT_REPLY:
        error = f"no reply to attempt {command.attempts} within {_seconds(policy)} s"
        _retry_command(command, now, policy, rng, error)
        return None
    if step is CommandStep.VERIFY:
        return _send_readback(command, now, policy)
    if step is CommandStep.AWAIT_READBACK:
        error = f"no answer to read-back {command.readbacks} within {_seconds(policy)} s"
        _retry_readback(command, now, policy, rng, error)
        return None
    raise ValueError(f"command {command.id} in step {step.value} is not due for anything")


def on_reply(
    command: MeterCommand,
    readback_number: int | None,
    reply: CommandReply,
    now: datetime,
    policy: RetryPolicy,
    rng: random.Random,
) -> WireMessage | None:
    """Apply the meter's reply to the command or to read-back ``readback_number``.

    Raises UnexpectedReply, changing nothing, when the command is not waiting for it.
    """
    if readback_number is None:
        return _on_command_reply(command, reply, now, policy)
    return _on_readback_reply(command, readback_number, reply, now, policy, rng)


def expire(command: MeterCommand, now: datetime) -> None:
    """End an open command whose ``expires_at`` has passed."""
    _finish(command, CommandState.EXPIRED, now, _expiry_reason(command))


def _on_command_reply(
    command: MeterCommand, reply: CommandReply, now: datetime, policy: RetryPolicy
) -> WireMessage | None:
    step = CommandStep(command.step)
    # A reply to an earlier attempt may arrive while the retry waits for its backoff.
    waiting = step is CommandStep.AWAIT_REPLY or (step is CommandStep.SEND and command.attempts > 0)
    if not waiting:
        raise UnexpectedReply(
            f"command {command.id} is {command.state}/{command.step}: not waiting for a reply"
        )
    command.result = dict(reply.result)
    if reply.status is ReplyStatus.ERROR:
        _finish(command, CommandState.FAILED, now, f"meter refused: {reply.reason or 'no reason'}")
        return None
    command.acknowledged_at = now
    command.last_error = None
    if CommandName(command.name) in READBACK_COMMANDS:
        if command.readbacks >= policy.max_readbacks:
            # Only a late or repeated acknowledgement can get here: the read-backs that
            # followed the earlier one are spent.
            error = f"acknowledged, but all {command.readbacks} read-backs are used"
            _finish(command, CommandState.FAILED, now, error)
            return None
        return _send_readback(command, now, policy)
    _confirm(command, now, Confirmation.METER_REPLY)
    return None


def _on_readback_reply(
    command: MeterCommand,
    number: int,
    reply: CommandReply,
    now: datetime,
    policy: RetryPolicy,
    rng: random.Random,
) -> WireMessage | None:
    step = CommandStep(command.step)
    # Only the latest read-back counts: an older one may predate the last send.
    if step not in (CommandStep.AWAIT_READBACK, CommandStep.VERIFY) or number != command.readbacks:
        raise UnexpectedReply(
            f"read-back {number} of command {command.id} is not awaited "
            f"({command.state}/{command.step}, latest read-back {command.readbacks})"
        )
    command.result = dict(reply.result)
    if reply.status is ReplyStatus.ERROR:
        error = f"read-back {number} refused: {reply.reason or 'no reason'}"
        _retry_readback(command, now, policy, rng, error)
        return None
    name = CommandName(command.name)
    mismatch = readback_mismatch(name, command.params, reply.result)
    if mismatch is None:
        never_sent = command.verify_first and command.attempts == 0
        _confirm(
            command, now, Confirmation.ALREADY_IN_STATE if never_sent else Confirmation.READBACK
        )
        return None
    if command.verify_first and command.attempts == 0:
        # The hint was stale: the meter is not in the state yet, so now send the command.
        command.verify_first = False
        return _send_command(command, now, policy)
    error = f"read-back {number} after attempt {command.attempts}: {mismatch}"
    _retry_command(command, now, policy, rng, error)
    return None


def _send_command(command: MeterCommand, now: datetime, policy: RetryPolicy) -> WireMessage:
    command.attempts += 1
    command.state = CommandState.SENT.value
    command.step = CommandStep.AWAIT_REPLY.value
    deadline = _deadline(command, now, policy)
    command.next_action_at = deadline
    command.first_sent_at = command.first_sent_at or now
    command.last_sent_at = now
    name = CommandName(command.name)
    return WireMessage(
        command.id,
        command.correlation_id,
        name,
        wire_params(name, command.params, now),
        deadline,
        _meter_expiry(command, deadline, policy),
    )


def _send_readback(command: MeterCommand, now: datetime, policy: RetryPolicy) -> WireMessage:
    command.readbacks += 1
    command.state = CommandState.SENT.value
    command.step = CommandStep.AWAIT_READBACK.value
    deadline = _deadline(command, now, policy)
    command.next_action_at = deadline
    command.first_sent_at = command.first_sent_at or now
    command.last_sent_at = now
    return WireMessage(
        command.id,
        readback_wire_id(command.correlation_id, command.readbacks),
        CommandName.READ_NOW,
        {},
        deadline,
        _meter_expiry(command, deadline, policy),
    )


def _retry_command(
    command: MeterCommand, now: datetime, policy: RetryPolicy, rng: random.Random, error: str
) -> None:
    if command.attempts >= policy.max_attempts:
        _finish(command, CommandState.FAILED, now, f"{error}; {command.attempts} attempts used")
        return
    command.state = CommandState.QUEUED.value
    command.step = CommandStep.SEND.value
    command.next_action_at = now + policy.backoff(command.attempts, rng)
    command.last_error = error


def _retry_readback(
    command: MeterCommand, now: datetime, policy: RetryPolicy, rng: random.Random, error: str
) -> None:
    if command.readbacks >= policy.max_readbacks:
        _finish(command, CommandState.FAILED, now, f"{error}; {command.readbacks} read-backs used")
        return
    command.step = CommandStep.VERIFY.value
    command.next_action_at = now + policy.backoff(command.readbacks, rng)
    command.last_error = error


def _confirm(command: MeterCommand, now: datetime, how: Confirmation) -> None:
    command.confirmation = how.value
    _finish(command, CommandState.CONFIRMED, now, None)


def _finish(command: MeterCommand, state: CommandState, now: datetime, error: str | None) -> None:
    command.state = state.value
    command.step = CommandStep.DONE.value
    command.next_action_at = None
    command.finished_at = now
    if error is not None:
        command.last_error = error
    elif state is CommandState.CONFIRMED:
        command.last_error = None


def _deadline(command: MeterCommand, now: datetime, policy: RetryPolicy) -> datetime:
    return min(now + policy.reply_timeout, command.expires_at)


def _meter_expiry(command: MeterCommand, deadline: datetime, policy: RetryPolicy) -> datetime:
    return min(deadline + policy.meter_clock_tolerance, command.expires_at)


def _seconds(policy: RetryPolicy) -> str:
    return f"{policy.reply_timeout.total_seconds():g}"


def _expiry_reason(command: MeterCommand) -> str:
    if command.acknowledged_at is not None:
        detail = "acknowledged by the meter but not confirmed by read-back"
    elif command.attempts or command.readbacks:
        detail = "sent but not answered"
    else:
        detail = "never sent (the meter was busy with earlier commands or unreachable)"
    previous = f"; last error: {command.last_error}" if command.last_error else ""
    return f"expired at {command.expires_at.isoformat()}: {detail}{previous}"
