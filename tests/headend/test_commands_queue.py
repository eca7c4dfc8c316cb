"""The command queue over a real database (SQLite, or PostgreSQL in CI), without meters:
the tests play the meter's replies by hand and move a hand-held clock."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from gridvend.audit import AuditLog
from headend.commands import (
    CommandError,
    CommandQueue,
    CommandState,
    CommandStep,
    Confirmation,
    RetryPolicy,
)
from headend.commands.models import MeterCommand
from headend.commands.service import MODBUS_PROTOCOLS, InboundReply
from headend.models import Meter, MeterLifecycle, MeterProtocol
from protocols.mqtt import CommandName, ReplyStatus
from tests.headend.commands_support import (
    FAST_POLICY,
    REPLIES_TOPIC,
    Clock,
    add_meter,
    audit_actions,
    count,
    make_queue,
    rejected_reasons,
    reply_to,
)

OPEN = {"relay_closed": False}
CLOSED = {"relay_closed": True}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue(session_factory: sessionmaker[Session], clock: Clock) -> CommandQueue:
    return make_queue(session_factory, clock)


def _disconnect(queue: CommandQueue, meter_id: int, **kwargs: object) -> int:
    return queue.request(
        meter_id, "disconnect", requested_by="balance-engine", reason="credit exhausted", **kwargs
    )


def _confirm_relay(queue: CommandQueue, relay: dict[str, bool]) -> None:
    """Play a meter that executes the claimed command and reports ``relay`` on read-back."""
    [sent] = queue.claim_due(instance="test")
    [readback] = queue.handle_reply(REPLIES_TOPIC, reply_to(sent))
    assert queue.handle_reply(REPLIES_TOPIC, reply_to(readback, result=relay)) == []


def test_requested_command_is_stored_queued_and_audited(
    queue: CommandQueue, session_factory: sessionmaker[Session]
) -> None:
    meter = add_meter(session_factory, "M-1")
    command_id = _disconnect(queue, meter)

    status = queue.status(command_id)
    assert (status.state, status.step, status.attempts) == (CommandState.QUEUED, "send", 0)
    assert status.name == "disconnect"
    assert status.requested_by == "balance-engine"
    assert audit_actions(session_factory) == ["meter_command.requested"]


@pytest.mark.parametrize(
    ("name", "params", "code"),
    [
        ("explode", {}, "unknown_command"),
        ("disconnect", {"now": True}, "invalid_params"),
        ("set_power_limit", {}, "invalid_params"),
        ("set_power_limit", {"watts": -1}, "invalid_params"),
        ("set_power_limit", {"watts": True}, "invalid_params"),
        ("set_power_limit", {"watts": 1_000_001}, "invalid_params"),
        ("push_token", {"token": "1234"}, "invalid_params"),
        ("push_token", {"token": 12345678901234567890}, "invalid_params"),
        ("set_clock", {"time": "2026-11-24T08:00:00"}, "invalid_params"),
        ("set_clock", {"time": "yesterday"}, "invalid_params"),
    ],
)
def test_invalid_request_is_refused_with_its_code_and_stores_nothing(
    queue: CommandQueue,
    session_factory: sessionmaker[Session],
    name: str,
    params: dict[str, object],
    code: str,
) -> None:
    meter = add_meter(session_factory, "M-1")
    with pytest.raises(CommandError) as raised:
        queue.request(meter, name, params, requested_by="tech", reason="")
    assert raised.value.code == code
    assert count(session_factory, MeterCommand) == 0
    assert audit_actions(session_factory) == []


def test_command_for_an_unknown_decommissioned_or_unreachable_meter_is_refused(
    queue: CommandQueue, session_factory: sessionmaker[Session]
) -> None:
    retired = add_meter(session_factory, "M-OLD", lifecycle=MeterLifecycle.DECOMMISSIONED)
    no_topic = add_meter(session_factory, "site/7")  # cannot be one MQTT topic level
    codes = []
    for meter in (999_999, retired, no_topic):
        with pytest.raises(CommandError) as raised:
            _disconnect(queue, meter)
        codes.append(raised.value.code)
    assert codes == ["meter_not_found", "meter_decommissioned", "unsupported_transport"]
    assert count(session_factory, MeterCommand) == 0


def test_each_transport_claims_only_its_own_meters_commands(
    queue: CommandQueue, session_factory: sessionmaker[Session]
) -> None:
    mqtt = add_meter(session_factory, "M-MQ")
    modbus = add_meter(session_factory, "M-MB", protocol=MeterProtocol.MODBUS_TCP)
    _disconnect(queue, mqtt)
    _disconnect(queue, modbus)
    [over_mqtt] = queue.claim_due(instance="dispatcher")
    [over_modbus] = queue.claim_due(instance="modbus", protocols=MODBUS_PROTOCOLS)
    assert (over_mqtt.comm_id, over_modbus.comm_id) == ("M-MQ", "M-MB")
    assert queue.claim_due(instance="dispatcher", protocols=MODBUS_PROTOCOLS) == []


def test_token_is_normalised_and_masked_when_shown(
    queue: CommandQueue, session_factory: sessionmaker[Session]
) -> None:
    meter = add_meter(session_factory, "M-1")
    command_id = queue.request(
        meter,
        CommandName.PUSH_TOKEN,
        {"token": "1234 5678 9012 3456 7890"},
        requested_by="clerk",
        reason="customer top-up",
    )
    assert queue.status(command_id).params == {"token": "****************7890"}
    [sent] = queue.claim_due(instance="test")
    assert sent.message.params == {"token": "12345678901234567890"}


def test_same_idempotency_key_returns_the_first_command(
    queue: CommandQueue, session_factory: sessionmaker[Session]
) -> None:
    meter = add_meter(session_factory, "M-1")
    first = _disconnect(queue, meter, idempotency_key="account-7:decision-3")
    again = _disconnect(queue, meter, idempotency_key="account-7:decision-3")
    assert again == first
    assert count(session_factory, MeterCommand) == 1
    with pytest.raises(CommandError) as raised:
        queue.request(
            meter,
            "connect",
            requested_by="balance-engine",
            reason="",
            idempotency_key="account-7:decision-3",
        )
    assert raised.value.code == "idempotency_key_reused"


def test_disconnect_is_confirmed_only_after_the_read_back_shows_the_relay_open(
    queue: CommandQueue, session_factory: sessionmaker[Session], clock: Clock
) -> None:
    meter = add_meter(session_factory, "M-1")
    command_id = _disconnect(queue, meter)

    [sent] = queue.claim_due(instance="test")
    assert (sent.comm_id, sent.message.name, sent.message.params) == ("M-1", "disconnect", {})
    status = queue.status(command_id)
    assert (status.state, status.step, status.attempts) == (CommandState.SENT, "await_reply", 1)

    clock.advance(1)
    [readback] = queue.handle_reply(REPLIES_TOPIC, reply_to(sent, result=OPEN))
    assert readback.message.name == CommandName.READ_NOW
    assert readback.message.wire_id == f"{sent.message.wire_id}.r1"
    status = queue.status(command_id)
    assert (status.state, status.step) == (CommandState.SENT, "await_readback")
    assert status.acknowledged_at == clock.now

    clock.advance(1)
    assert queue.handle_reply(REPLIES_TOPIC, reply_to(readback, result=OPEN)) == []
    status = queue.status(command_id)
    assert (status.state, status.confirmation) == (CommandState.CONFIRMED, Confirmation.READBACK)
    assert status.finished_at == clock.now
    known = queue.known_control_state(meter)
    assert known is not None and known.relay_closed is False
    assert audit_actions(session_factory) == [
        "meter_command.requested",
        "meter_command.confirmed",
    ]


def test_second_disconnect_of_a_disconnected_meter_is_verified_not_resent(
    queue: CommandQueue, session_factory: sessionmaker[Session]
) -> None:
    meter = add_meter(session_factory, "M-1")
    _disconnect(queue, meter)
    _confirm_relay(queue, OPEN)

    second = _disconnect(queue, meter)
    [sent] = queue.claim_due(instance="test")
    assert sent.message.name == CommandName.READ_NOW  # a look, not a disconnect
    assert queue.handle_reply(REPLIES_TOPIC, reply_to(sent, result=OPEN)) == []
    status = queue.status(second)
    assert status.state == CommandState.CONFIRMED
    assert status.confirmation == Confirmation.ALREADY_IN_STATE
    assert status.attempts == 0


def test_stale_relay_hint_leads_to_sending_the_command_after_all(
    queue: CommandQueue, session_factory: sessionmaker[Session]
) -> None:
    meter = add_meter(session_factory, "M-1")
    _disconnect(queue, meter)
    _confirm_relay(queue, OPEN)

    # Someone closed the relay at the meter since; the hint still says open.
    second = _disconnect(queue, meter)
    [look] = queue.claim_due(instance="test")
    [sent] = queue.handle_reply(REPLIES_TOPIC, reply_to(look, result=CLOSED))
    assert sent.message.name == CommandName.DISCONNECT
    [readback] = queue.handle_reply(REPLIES_TOPIC, reply_to(sent))
    queue.handle_reply(REPLIES_TOPIC, reply_to(readback, result=OPEN))
    status = queue.status(second)
    assert (status.state, status.confirmation, status.attempts) == (
        CommandState.CONFIRMED,
        Confirmation.READBACK,
        1,
    )


def test_commands_for_one_meter_run_one_at_a_time_in_request_order(
    queue: CommandQueue, session_factory: sessionmaker[Session]
) -> None:
    meter = add_meter(session_factory, "M-1")
    other = add_meter(session_factory, "M-2")
    first = _disconnect(queue, meter)
    second = queue.request(meter, "connect", requested_by="balance-engine", reason="top-up")
    elsewhere = _disconnect(queue, other)

    claimed = queue.claim_due(instance="test")
    assert sorted(o.message.command_id for o in claimed) == [first, elsewhere]
    assert queue.claim_due(instance="test") == []  # the connect waits for the disconnect

    [readback] = queue.handle_reply(
        REPLIES_TOPIC, reply_to(next(o for o in claimed if o.message.command_id == first))
    )
    queue.handle_reply(REPLIES_TOPIC, reply_to(readback, result=OPEN))
    [next_up] = queue.claim_due(instance="test")
    assert (next_up.message.command_id, next_up.message.name) == (second, "connect")


def test_command_for_an_offline_meter_waits_until_the_meter_is_back(
    queue: CommandQueue, session_factory: sessionmaker[Session]
) -> None:
    meter = add_meter(session_factory, "M-1")
    _set_online(session_factory, meter, False)
    command_id = _disconnect(queue, meter)
    assert queue.claim_due(instance="test") == []
    assert queue.status(command_id).attempts == 0

    _set_online(session_factory, meter, True)
    [sent] = queue.claim_due(instance="test")
    assert sent.message.command_id == command_id


def _set_online(session_factory: sessionmaker[Session], meter_id: int, online: bool) -> None:
    with session_factory() as session, session.begin():
        meter = session.get(Meter, meter_id)
        assert meter is not None
        meter.online = online


def test_unanswered_command_is_resent_with_the_same_id_then_fails(
    queue: CommandQueue, session_factory: sessionmaker[Session], clock: Clock
) -> None:
    meter = add_meter(session_factory, "M-1")
    command_id = _disconnect(queue, meter)
    [first] = queue.claim_due(instance="test")

    clock.advance(5)  # reply timeout
    assert queue.claim_due(instance="test") == []
    status = queue.status(command_id)
    assert (status.state, status.step) == (CommandState.QUEUED, CommandStep.SEND)
    assert status.last_error == "no reply to attempt 1 within 5 s"

    clock.advance(2)  # first backoff
    [second] = queue.claim_due(instance="test")
    assert second.message.wire_id == first.message.wire_id
    clock.advance(5)
    queue.claim_due(instance="test")
    clock.advance(4)  # second backoff doubles
    [third] = queue.claim_due(instance="test")
    assert third.message.wire_id == first.message.wire_id
    clock.advance(5)
    assert queue.claim_due(instance="test") == []

    status = queue.status(command_id)
    assert (status.state, status.attempts) == (CommandState.FAILED, 3)
    assert status.last_error == "no reply to attempt 3 within 5 s; 3 attempts used"
    assert audit_actions(session_factory)[-1] == "meter_command.failed"


def test_late_reply_to_an_earlier_attempt_still_counts(
    queue: CommandQueue, session_factory: sessionmaker[Session], clock: Clock
) -> None:
    meter = add_meter(session_factory, "M-1")
    command_id = _disconnect(queue, meter)
    [sent] = queue.claim_due(instance="test")
    clock.advance(5)
    queue.claim_due(instance="test")  # timed out; retry waits for its backoff

    [readback] = queue.handle_reply(REPLIES_TOPIC, reply_to(sent))
    queue.handle_reply(REPLIES_TOPIC, reply_to(readback, result=OPEN))
    assert queue.status(command_id).state == CommandState.CONFIRMED


def test_meter_refusal_fails_the_command_with_the_meters_reason(
    queue: CommandQueue, session_factory: sessionmaker[Session]
) -> None:
    meter = add_meter(session_factory, "M-1")
    command_id = queue.request(
        meter, "set_power_limit", {"watts": 5}, requested_by="tech", reason="test"
    )
    [sent] = queue.claim_due(instance="test")
    queue.handle_reply(
        REPLIES_TOPIC, reply_to(sent, status=ReplyStatus.ERROR, reason="limit below 100 W")
    )
    status = queue.status(command_id)
    assert (status.state, status.last_error) == (
        CommandState.FAILED,
        "meter refused: limit below 100 W",
    )


def test_read_back_showing_the_old_state_retries_the_command(
    queue: CommandQueue, session_factory: sessionmaker[Session], clock: Clock
) -> None:
    meter = add_meter(session_factory, "M-1")
    command_id = queue.request(
        meter, "set_power_limit", {"watts": 2000}, requested_by="tech", reason="test"
    )
    [sent] = queue.claim_due(instance="test")
    [readback] = queue.handle_reply(REPLIES_TOPIC, reply_to(sent))
    queue.handle_reply(REPLIES_TOPIC, reply_to(readback, result={"relay_closed": True}))
    status = queue.status(command_id)
    assert (status.state, status.step) == (CommandState.QUEUED, CommandStep.SEND)
    assert status.last_error == "read-back 1 after attempt 1: power limit is none"

    clock.advance(2)
    [again] = queue.claim_due(instance="test")
    [readback] = queue.handle_reply(REPLIES_TOPIC, reply_to(again))
    queue.handle_reply(
        REPLIES_TOPIC, reply_to(readback, result={"relay_closed": True, "power_limit_w": 2000})
    )
    status = queue.status(command_id)
    assert (status.state, status.attempts, status.readbacks) == (CommandState.CONFIRMED, 2, 2)


def test_waiting_command_expires_when_its_time_to_live_passes(
    queue: CommandQueue, session_factory: sessionmaker[Session], clock: Clock
) -> None:
    meter = add_meter(session_factory, "M-1")
    blocker = _disconnect(queue, meter)
    waiting = queue.request(
        meter, "connect", requested_by="tech", reason="", ttl=timedelta(seconds=3)
    )
    queue.claim_due(instance="test")  # the disconnect is sent and holds the meter

    clock.advance(4)
    assert queue.claim_due(instance="test") == []
    status = queue.status(waiting)
    assert status.state == CommandState.EXPIRED
    assert status.last_error is not None and "never sent" in status.last_error
    assert queue.status(blocker).state == CommandState.SENT
    assert audit_actions(session_factory)[-1] == "meter_command.expired"


def test_reply_with_an_unknown_correlation_id_is_kept_and_changes_nothing(
    queue: CommandQueue, session_factory: sessionmaker[Session]
) -> None:
    meter = add_meter(session_factory, "M-1")
    command_id = _disconnect(queue, meter)
    [sent] = queue.claim_due(instance="test")
    before = queue.status(command_id)

    stray = (
        b'{"v":1,"id":"0123456789abcdef","meter_id":"M-1","status":"ok",'
        b'"result":{"relay_closed":false}}'
    )
    assert queue.handle_reply(REPLIES_TOPIC, stray) == []
    assert queue.handle_reply(REPLIES_TOPIC, b"not json") == []
    assert queue.handle_reply(REPLIES_TOPIC, reply_to(sent, meter_id="M-2")) == []

    assert queue.status(command_id) == before
    assert queue.known_control_state(meter) is None
    reasons = rejected_reasons(session_factory)
    assert reasons[0] == "unknown_correlation_id: no command has correlation id '0123456789abcdef'"
    assert reasons[1].startswith("bad_payload: not JSON")
    assert reasons[2].startswith("meter_mismatch: reply to command")


def test_reply_after_the_command_finished_is_kept_as_unexpected(
    queue: CommandQueue, session_factory: sessionmaker[Session]
) -> None:
    meter = add_meter(session_factory, "M-1")
    command_id = _disconnect(queue, meter)
    [sent] = queue.claim_due(instance="test")
    [readback] = queue.handle_reply(REPLIES_TOPIC, reply_to(sent))
    queue.handle_reply(REPLIES_TOPIC, reply_to(readback, result=OPEN))
    final = queue.status(command_id)

    assert queue.handle_reply(REPLIES_TOPIC, reply_to(sent)) == []
    assert queue.status(command_id) == final
    [reason] = rejected_reasons(session_factory)
    assert reason.startswith(f"unexpected_reply: command {command_id} is confirmed/done")


def test_time_sync_without_a_time_sends_the_time_of_sending(
    queue: CommandQueue, session_factory: sessionmaker[Session], clock: Clock
) -> None:
    meter = add_meter(session_factory, "M-1")
    command_id = queue.request(meter, "set_clock", requested_by="tech", reason="drift")
    clock.advance(30)
    [sent] = queue.claim_due(instance="test")
    assert sent.message.params == {"time": clock.now.isoformat()}
    queue.handle_reply(REPLIES_TOPIC, reply_to(sent))
    status = queue.status(command_id)
    assert (status.state, status.confirmation) == (
        CommandState.CONFIRMED,
        Confirmation.METER_REPLY,
    )
    assert audit_actions(session_factory) == []  # a clock is not a relay, limit or token


def test_concurrent_dispatchers_never_claim_the_same_command(
    session_factory: sessionmaker[Session], clock: Clock
) -> None:
    meters = [add_meter(session_factory, f"M-{i}") for i in range(40)]
    setup = make_queue(session_factory, clock)
    for meter in meters:
        _disconnect(setup, meter)
    workers = [make_queue(session_factory, clock) for _ in range(4)]
    claimed: list[int] = []
    lock = threading.Lock()

    def work(queue: CommandQueue) -> None:
        while True:
            batch = queue.claim_due(instance="w", limit=3)
            if not batch:
                return
            with lock:
                claimed.extend(o.message.command_id for o in batch)

    threads = [threading.Thread(target=work, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(set(claimed))
    assert len(claimed) == len(meters)


def test_a_batch_of_replies_applies_the_good_ones_and_keeps_the_bad_ones(
    queue: CommandQueue, session_factory: sessionmaker[Session]
) -> None:
    meters = [add_meter(session_factory, f"M-{i}") for i in range(3)]
    ids = [_disconnect(queue, m) for m in meters]
    sent = sorted(queue.claim_due(instance="test"), key=lambda o: o.message.command_id)
    batch = [
        InboundReply(REPLIES_TOPIC, reply_to(sent[0])),
        InboundReply(REPLIES_TOPIC, b"{}"),
        InboundReply(REPLIES_TOPIC, reply_to(sent[1]), correlation_data=b"someone-else"),
        InboundReply(REPLIES_TOPIC, reply_to(sent[2])),
        InboundReply(REPLIES_TOPIC, reply_to(sent[2])),  # QoS 1 duplicate
    ]
    follow_up = queue.handle_replies(batch)
    assert [o.message.command_id for o in follow_up] == [ids[0], ids[2]]
    assert [queue.status(i).step for i in ids] == [
        "await_readback",
        "await_reply",
        "await_readback",
    ]
    assert [r.split(":")[0] for r in rejected_reasons(session_factory)] == [
        "bad_payload",
        "correlation_mismatch",
        "unexpected_reply",
    ]


def test_a_kind_of_command_can_have_its_own_retry_policy(
    session_factory: sessionmaker[Session], clock: Clock
) -> None:
    once = RetryPolicy(
        reply_timeout=timedelta(seconds=30), max_attempts=1, default_ttl=timedelta(minutes=2)
    )
    queue = CommandQueue(
        session_factory,
        audit=AuditLog(),
        policy=FAST_POLICY,
        policies={CommandName.PUSH_TOKEN: once},
        clock=clock,
    )
    meter = add_meter(session_factory, "M-1")
    token = queue.request(meter, "push_token", {"token": "1" * 20}, requested_by="clerk", reason="")
    [sent] = queue.claim_due(instance="test")
    assert sent.message.reply_deadline == clock.now + timedelta(seconds=30)
    clock.advance(30)
    queue.claim_due(instance="test")
    status = queue.status(token)
    assert (status.state, status.attempts) == (CommandState.FAILED, 1)  # never sent twice
    assert status.expires_at == status.requested_at + timedelta(minutes=2)
