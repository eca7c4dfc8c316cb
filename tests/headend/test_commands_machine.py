"""The pure command state machine and parameter rules, property-tested without a database."""

from __future__ import annotations

import random
from datetime import timedelta

from hypothesis import example, given, settings
from hypothesis import strategies as st

from headend.commands import machine
from headend.commands.models import CommandState, CommandStep, Confirmation, MeterCommand
from headend.commands.policy import RetryPolicy
from headend.commands.spec import (
    CommandError,
    ControlSnapshot,
    already_satisfied,
    mask_params,
    readback_mismatch,
    validate_params,
)
from protocols.mqtt import CommandName, CommandReply, ReplyStatus
from tests.headend.commands_support import START

POLICY = RetryPolicy(
    reply_timeout=timedelta(seconds=5),
    max_attempts=3,
    max_readbacks=2,
    backoff_initial=timedelta(seconds=1),
    backoff_max=timedelta(seconds=4),
    jitter=0.2,
    default_ttl=timedelta(minutes=2),
)


def _command(name: CommandName = CommandName.DISCONNECT, **params: int) -> MeterCommand:
    return MeterCommand(
        id=1,
        meter_id=1,
        name=name.value,
        params=dict(params),
        correlation_id="c0ffee",
        requested_by="t",
        reason="",
        state=CommandState.QUEUED.value,
        step=CommandStep.SEND.value,
        verify_first=False,
        attempts=0,
        readbacks=0,
        requested_at=START,
        expires_at=START + POLICY.default_ttl,
        next_action_at=START,
    )


def _reply(wire_id: str, status: ReplyStatus, relay_closed: bool | None) -> CommandReply:
    result = {} if relay_closed is None else {"relay_closed": relay_closed}
    return CommandReply(id=wire_id, meter_id="M", status=status, result=result)


# One step of the world: time passes and the dispatcher ticks, or a reply comes back.
_events = st.lists(
    st.one_of(
        st.tuples(st.just("tick"), st.integers(min_value=0, max_value=20)),
        st.tuples(
            st.just("reply"),
            st.sampled_from(["command", "latest_readback", "old_readback", "stray"]),
            st.sampled_from([ReplyStatus.OK, ReplyStatus.ERROR]),
            st.sampled_from([True, False, None]),
        ),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@example(  # a late acknowledgement once every read-back is spent
    events=[
        ("tick", 0),
        ("reply", "command", ReplyStatus.OK, True),
        ("tick", 5),
        ("tick", 2),
        ("reply", "latest_readback", ReplyStatus.OK, True),
        ("reply", "command", ReplyStatus.OK, True),
    ],
    known=None,
    seed=0,
)
@given(
    events=_events,
    known=st.sampled_from([None, ControlSnapshot(False, None), ControlSnapshot(True, None)]),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_sequence_of_ticks_and_replies_keeps_the_command_consistent(
    events: list[tuple[object, ...]], known: ControlSnapshot | None, seed: int
) -> None:
    rng = random.Random(seed)
    command = _command()
    now = START
    last_readback_relay: bool | None = None
    for event in events:
        sent: machine.WireMessage | None = None
        if event[0] == "tick":
            now += timedelta(seconds=int(event[1]))  # type: ignore[call-overload]
            if command.next_action_at is not None and now >= command.next_action_at:
                sent = machine.on_due(command, now, POLICY, known, rng)
        else:
            _, target, status, relay = event
            assert isinstance(status, ReplyStatus)
            assert relay is None or isinstance(relay, bool)
            number = {
                "command": None,
                "latest_readback": command.readbacks,
                "old_readback": command.readbacks - 1,
                "stray": command.readbacks + 1,
            }[str(target)]
            if number is not None and number < 1:
                continue
            wire_id = (
                command.correlation_id
                if number is None
                else machine.readback_wire_id(command.correlation_id, number)
            )
            before = dict(vars(command))
            try:
                sent = machine.on_reply(
                    command, number, _reply(wire_id, status, relay), now, POLICY, rng
                )
            except machine.UnexpectedReply:
                after = dict(vars(command))
                assert after == before  # an unexpected reply changes nothing
                continue
            if number is not None and status is ReplyStatus.OK:
                last_readback_relay = relay
        if sent is not None:
            assert sent.reply_deadline == command.next_action_at
            assert sent.reply_deadline <= sent.expires_at <= command.expires_at
            if sent.name is CommandName.READ_NOW:
                assert sent.wire_id == f"{command.correlation_id}.r{command.readbacks}"
            else:
                assert sent.wire_id == command.correlation_id  # retries re-use the id
        assert command.attempts <= POLICY.max_attempts
        assert command.readbacks <= POLICY.max_readbacks
        state = CommandState(command.state)
        if state.final:
            assert command.step == CommandStep.DONE
            assert command.next_action_at is None and command.finished_at is not None
        else:
            assert command.next_action_at is not None
            assert command.next_action_at <= command.expires_at
        if state is CommandState.CONFIRMED:
            # A disconnect is only ever confirmed by a read-back that shows the relay open.
            assert last_readback_relay is False
            if command.confirmation == Confirmation.READBACK:
                assert command.acknowledged_at is not None and command.attempts >= 1
            else:
                assert command.confirmation == Confirmation.ALREADY_IN_STATE
                assert command.attempts == 0
        if state.final:
            break


@given(st.text(min_size=1, max_size=40), st.integers(1, 10**6))
def test_read_back_ids_split_back_into_the_command_id_and_number(base: str, n: int) -> None:
    assert machine.split_wire_id(machine.readback_wire_id(base, n)) == (base, n)


@given(st.text(alphabet="0123456789abcdef", min_size=1, max_size=40))
def test_a_command_id_is_never_mistaken_for_a_read_back(correlation_id: str) -> None:
    assert machine.split_wire_id(correlation_id) == (correlation_id, None)


@given(st.integers(1, 60), st.integers(0, 2**32 - 1))
def test_backoff_grows_to_its_cap_within_the_jitter(retry: int, seed: int) -> None:
    delay = POLICY.backoff(retry, random.Random(seed))
    base = min(POLICY.backoff_initial.total_seconds() * 2.0 ** (retry - 1), 4.0)
    assert base * 0.8 - 1e-6 <= delay.total_seconds() <= base * 1.2 + 1e-6


@given(st.lists(st.integers(0, 9), min_size=20, max_size=20), st.sampled_from(["", " ", "-"]))
def test_printed_tokens_are_normalised_to_their_20_digits(digits: list[int], sep: str) -> None:
    plain = "".join(map(str, digits))
    printed = sep.join(plain[i : i + 4] for i in range(0, 20, 4))
    assert validate_params(CommandName.PUSH_TOKEN, {"token": printed}) == {"token": plain}
    assert mask_params(CommandName.PUSH_TOKEN, {"token": plain})["token"].endswith(plain[-4:])


@given(st.text(max_size=30))
def test_anything_but_20_digits_is_not_a_token(text: str) -> None:
    digits = text.replace(" ", "").replace("-", "")
    if len(digits) == 20 and digits.isascii() and digits.isdigit():
        return
    try:
        validate_params(CommandName.PUSH_TOKEN, {"token": text})
    except CommandError as exc:
        assert exc.code == "invalid_params"
    else:
        raise AssertionError(f"{text!r} accepted as a token")


def test_power_limit_read_back_compares_watts_and_zero_means_no_limit() -> None:
    name = CommandName.SET_POWER_LIMIT
    assert readback_mismatch(name, {"watts": 2500}, {"power_limit_w": 2500}) is None
    assert readback_mismatch(name, {"watts": 2500}, {"power_limit_w": 2000}) == (
        "power limit is 2000 W"
    )
    assert readback_mismatch(name, {"watts": 0}, {"relay_closed": True}) is None
    assert readback_mismatch(name, {"watts": 0}, {"power_limit_w": 10}) == "power limit is 10 W"


def test_relay_hint_satisfies_only_the_matching_relay_command() -> None:
    open_relay = ControlSnapshot(relay_closed=False, power_limit_w=None)
    assert already_satisfied(CommandName.DISCONNECT, {}, open_relay)
    assert not already_satisfied(CommandName.CONNECT, {}, open_relay)
    assert not already_satisfied(CommandName.DISCONNECT, {}, ControlSnapshot(None, None))
    assert not already_satisfied(CommandName.READ_NOW, {}, open_relay)
