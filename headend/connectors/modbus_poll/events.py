"""A Modbus meter's event log, read during a poll: which registers say the log moved, and
which records of the log are new (pure functions; the poller does the reads).

The event count (the newest event's sequence number) and the relay reason sit in the
prepaid block next to the credit register, so they ride in the energy group's existing
request; the 48-register log is read only when the count differs from the last sequence
number stored for the meter. See docs/modbus-polling.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from protocols.modbus import (
    Ascii,
    CodecError,
    EventRecord,
    Prepaid,
    Profile,
    ReadRequest,
    RelayReason,
    TokenResult,
)
from protocols.mqtt import EventKind, MeterEvent

__all__ = ["EventState", "NewEvents", "event_points", "event_state", "log_request", "new_events"]

# Read with the energy group: why the relay last changed (to grade the newest relay
# event as MQTT meters' events are graded) and the newest event's sequence number.
_STATE_POINTS = (Prepaid.RELAY_REASON, Prepaid.EVENT_COUNT)
# The MQTT reason words (the meters' own) for the register's codes; the rest are the
# code's name in lower case.
_REASON_WORDS = {RelayReason.POWER_LIMIT: "power_limit_exceeded"}


@dataclass(frozen=True, slots=True)
class EventState:
    """What the energy reads said about the log: the newest sequence number, and the
    reason of the newest relay change (None when the profile has no reason register)."""

    event_count: int
    relay_reason: RelayReason | None


@dataclass(frozen=True, slots=True)
class NewEvents:
    """Records not stored before, oldest first, and why some could not be read ("" if
    none were missed: the log wrapped past them between two polls)."""

    events: tuple[MeterEvent, ...]
    gap: str = ""


def event_points(profile: Profile) -> tuple[Prepaid, ...]:
    """The points to add to an events-carrying group's reads (none without an event log)."""
    if profile.event_log is None or profile.find(Prepaid.EVENT_COUNT) is None:
        return ()
    return tuple(p for p in _STATE_POINTS if profile.find(p) is not None)


def log_request(profile: Profile) -> ReadRequest:
    """One read covering the whole event log. The caller checked ``event_points``."""
    log = profile.event_log
    assert log is not None
    return ReadRequest(profile.register(Prepaid.EVENT_COUNT).block, log.address, log.count)


def event_state(
    profile: Profile, replies: Iterable[tuple[ReadRequest, Sequence[int] | Sequence[bool]]]
) -> EventState | None:
    """The event count and relay reason from the replies of a plan that included
    ``event_points`` (None when the profile has none).

    Raises:
        CodecError: a value is malformed or an unknown relay reason.
    """
    values: dict[Prepaid, int] = {}
    points = event_points(profile)
    for request, data in replies:
        for point in points:
            reg = profile.register(point)
            if reg.block is not request.block or not (
                request.address <= reg.address and reg.end <= request.end
            ):
                continue
            assert reg.codec is not None and not isinstance(reg.codec, Ascii)
            offset = reg.address - request.address
            words = [int(w) for w in data[offset : offset + reg.count]]
            values[point] = int(reg.codec.decode(words))
    if Prepaid.EVENT_COUNT not in values:
        return None
    reason: RelayReason | None = None
    if Prepaid.RELAY_REASON in values:
        try:
            reason = RelayReason(values[Prepaid.RELAY_REASON])
        except ValueError:
            raise CodecError(f"unknown relay reason {values[Prepaid.RELAY_REASON]}") from None
    return EventState(values[Prepaid.EVENT_COUNT], reason)


def new_events(records: Sequence[EventRecord], state: EventState, last_seq: int) -> NewEvents:
    """The records of a log read (newest first) that come after ``last_seq``, the newest
    sequence number stored for the meter (0: none). A count below ``last_seq`` means the
    meter restarted its numbering: every record is a candidate (the store drops the ones
    it has, by (meter, seq, ts)).
    """
    restarted = state.event_count < last_seq
    first_expected = 1 if restarted else last_seq + 1
    fresh = sorted(
        (r for r in records if r.seq <= state.event_count and (restarted or r.seq > last_seq)),
        key=lambda r: r.seq,
    )
    oldest = fresh[0].seq if fresh else state.event_count + 1
    gap = ""
    if oldest > first_expected:
        gap = (
            f"event log wrapped: events {first_expected}..{oldest - 1} of "
            f"{state.event_count} were overwritten before they were read"
        )
    newest_relay = max((r.seq for r in fresh if r.kind is EventKind.RELAY_CHANGED), default=None)
    events = tuple(
        MeterEvent(
            seq=r.seq,
            ts=r.at,
            kind=r.kind,
            detail=_detail(r, state.relay_reason if r.seq == newest_relay else None),
        )
        for r in fresh
    )
    return NewEvents(events, gap)


def _detail(record: EventRecord, relay_reason: RelayReason | None) -> dict[str, str | int | bool]:
    """The record's detail word in the MQTT event's words."""
    if record.kind is EventKind.RELAY_CHANGED:
        detail: dict[str, str | int | bool] = {"closed": bool(record.detail)}
        # The reason register tells why the relay last changed: true of the newest relay
        # event only (older ones carry no reason and are graded as unexplained).
        if relay_reason is not None:
            detail["reason"] = _REASON_WORDS.get(relay_reason, relay_reason.name.lower())
        return detail
    if record.kind in (EventKind.TOKEN_ACCEPTED, EventKind.TOKEN_REJECTED):
        try:
            return {"token_result": TokenResult(record.detail).name.lower()}
        except ValueError:
            return {"token_result": record.detail}
    return {}
