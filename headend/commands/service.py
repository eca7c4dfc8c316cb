"""The command queue: requests are persisted here, and the dispatcher drives them from here.

Coordination lives in the database, so any number of dispatchers (on any machine) can
share one queue:

- Only a meter's *head* (its open command with the lowest id) is ever acted on, so the
  commands for one meter run one at a time in the order they were requested.
- A queued command is not sent while its meter is known to be offline (the retained
  status/last will says so); it is sent when the meter is back, or expires.
- On PostgreSQL the dispatcher claims due heads with ``SELECT ... FOR UPDATE SKIP
  LOCKED``; a reply handler locks its one row with ``FOR UPDATE``. On SQLite every
  writing transaction first takes the database write lock (SQLite's only lock), which
  serialises claimers and reply handlers the same way.
- Each row also carries a version counter, so a lost race can never overwrite a newer
  state (SQLAlchemy raises ``StaleDataError`` and the transaction is rolled back).

A state change is committed before the message it implies is published: a crash between
the two leaves a ``sent`` command whose reply deadline passes, and the retry re-sends the
same correlation id, which the meter answers without executing twice.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import exists, or_, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from headend.audit import AuditSink
from headend.commands import machine
from headend.commands.models import (
    OPEN_STATES,
    CommandState,
    CommandStep,
    MeterCommand,
    MeterControlState,
)
from headend.commands.policy import RetryPolicy
from headend.commands.spec import (
    AUDITED_COMMANDS,
    CommandError,
    ControlSnapshot,
    ParamValue,
    mask_params,
    parse_name,
    snapshot_from_readback,
    validate_params,
)
from headend.models import Meter, MeterLifecycle, MeterProtocol, RejectedMessage
from protocols.mqtt import (
    CommandName,
    CommandReply,
    PayloadError,
    TopicError,
    check_meter_id,
    parse_reply,
)

log = logging.getLogger(__name__)

SYSTEM_ACTOR = "headend"
MAX_REASON_CHARS = 1000
REJECT_SOURCE = "mqtt"


MODBUS_PROTOCOLS = (MeterProtocol.MODBUS_TCP, MeterProtocol.MODBUS_RTU)


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class CommandStatus:
    """A command as callers see it (a token parameter is masked)."""

    id: int
    meter_id: int
    name: str
    params: dict[str, ParamValue]
    state: CommandState
    step: CommandStep
    attempts: int
    readbacks: int
    requested_by: str
    reason: str
    idempotency_key: str | None
    requested_at: datetime
    expires_at: datetime
    first_sent_at: datetime | None
    last_sent_at: datetime | None
    acknowledged_at: datetime | None
    finished_at: datetime | None
    last_error: str | None
    confirmation: str | None
    result: dict[str, Any] | None

    @property
    def final(self) -> bool:
        return self.state.final


@dataclass(frozen=True, slots=True)
class Outbound:
    """A message to send to meter ``meter_id`` (transport id ``comm_id``)."""

    comm_id: str
    message: machine.WireMessage
    meter_id: int


@dataclass(frozen=True, slots=True)
class InboundReply:
    """One message as it arrived on the replies topic (``correlation_data``: MQTT 5)."""

    topic: str
    payload: bytes
    correlation_data: bytes | None = None
    received_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class KnownControlState:
    meter_id: int
    relay_closed: bool | None
    power_limit_w: int | None
    observed_at: datetime


class CommandQueue:
    """Commands to meters: request them, follow them, and (for the dispatcher) drive them.

    ``policy`` applies to every command unless ``policies`` has one for its name (e.g. a
    token push sent once only, or a longer reply timeout for a slow command).
    ``audit`` receives an entry, in the same transaction, for every relay, power-limit and
    token command when it is requested and when it ends. ``notify`` is called after a
    request is committed (the dispatcher's ``wake``), from whatever thread requested it.
    ``clock`` and ``rng`` are injectable so tests are exact.
    """

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        *,
        audit: AuditSink,
        policy: RetryPolicy | None = None,
        policies: Mapping[CommandName, RetryPolicy] | None = None,
        clock: Callable[[], datetime] = _utcnow,
        rng: random.Random | None = None,
        notify: Callable[[], None] | None = None,
    ) -> None:
        self._session_factory = session_factory
        self._audit = audit
        self.policy = policy or RetryPolicy()
        self._policies = dict(policies or {})
        self._clock = clock
        self._rng = rng or random.Random()
        self._notify = notify

    def set_notify(self, notify: Callable[[], None] | None) -> None:
        """Who to tell when a command is queued (wired once the dispatcher exists)."""
        self._notify = notify

    def now(self) -> datetime:
        return self._clock()

    def policy_for(self, name: CommandName | str) -> RetryPolicy:
        """The retry policy of one kind of command (its override, else the queue's)."""
        return self._policies.get(CommandName(name), self.policy)

    # --- the public interface -------------------------------------------------------

    def request(
        self,
        meter_id: int,
        name: CommandName | str,
        params: Mapping[str, object] | None = None,
        *,
        requested_by: str,
        reason: str,
        idempotency_key: str | None = None,
        ttl: timedelta | None = None,
    ) -> int:
        """Persist a command for meter ``meter_id`` (registry id) and return its id.

        ``requested_by`` names the user or service (1-64 characters); ``reason`` says why
        (up to 1000 characters). With an ``idempotency_key`` (1-128 characters) a repeated
        request returns the first command's id instead of queueing another. ``ttl`` is how
        long the command may take before it expires (default: the policy's).

        Raises CommandError with code ``unknown_command``, ``invalid_params``,
        ``invalid_request``, ``meter_not_found``, ``meter_decommissioned``,
        ``unsupported_transport`` or ``idempotency_key_reused``; nothing is stored then.
        """
        command_name = parse_name(name)
        clean = validate_params(command_name, params or {})
        if not 1 <= len(requested_by) <= 64:
            raise CommandError("invalid_request", "requested_by must be 1-64 characters")
        if len(reason) > MAX_REASON_CHARS:
            raise CommandError("invalid_request", f"reason exceeds {MAX_REASON_CHARS} characters")
        if idempotency_key is not None and not 1 <= len(idempotency_key) <= 128:
            raise CommandError("invalid_request", "idempotency_key must be 1-128 characters")
        policy = self.policy_for(command_name)
        lifetime = policy.default_ttl if ttl is None else ttl
        if not timedelta(0) < lifetime <= policy.max_ttl:
            raise CommandError(
                "invalid_request", f"ttl must be positive and at most {policy.max_ttl}"
            )
        try:
            command_id, created = self._insert(
                meter_id, command_name, clean, requested_by, reason, idempotency_key, lifetime
            )
        except IntegrityError:
            if idempotency_key is None:
                raise
            # A concurrent request with the same key won the insert; answer with its command.
            command_id, created = self._insert(
                meter_id, command_name, clean, requested_by, reason, idempotency_key, lifetime
            )
        if created and self._notify is not None:
            self._notify()
        return command_id

    def status(self, command_id: int) -> CommandStatus:
        """The command's current status; CommandError("command_not_found") if there is none."""
        with self._session_factory() as session:
            command = session.get(MeterCommand, command_id)
            if command is None:
                raise CommandError("command_not_found", f"no command {command_id}")
            return _status(command)

    def statuses(self, command_ids: Collection[int]) -> dict[int, CommandStatus]:
        """The status of each of these commands that exists, by id (one query)."""
        if not command_ids:
            return {}
        with self._session_factory() as session:
            rows = session.scalars(
                select(MeterCommand).where(MeterCommand.id.in_(set(command_ids)))
            )
            return {c.id: _status(c) for c in rows}

    def list_for_meter(
        self,
        meter_id: int,
        *,
        states: Sequence[CommandState] | None = None,
        limit: int = 50,
    ) -> list[CommandStatus]:
        """The meter's commands, newest first; CommandError("meter_not_found")."""
        with self._session_factory() as session:
            if session.get(Meter, meter_id) is None:
                raise CommandError("meter_not_found", f"no meter {meter_id}")
            query = select(MeterCommand).where(MeterCommand.meter_id == meter_id)
            if states:
                query = query.where(MeterCommand.state.in_([s.value for s in states]))
            query = query.order_by(MeterCommand.id.desc()).limit(max(1, min(limit, 1000)))
            return [_status(c) for c in session.scalars(query)]

    def list_recent(
        self, *, states: Sequence[CommandState] | None = None, limit: int = 50
    ) -> list[CommandStatus]:
        """Commands of every meter, newest first (e.g. every ``failed`` one, for an operator)."""
        with self._session_factory() as session:
            query = select(MeterCommand)
            if states:
                query = query.where(MeterCommand.state.in_([s.value for s in states]))
            query = query.order_by(MeterCommand.id.desc()).limit(max(1, min(limit, 1000)))
            return [_status(c) for c in session.scalars(query)]

    def known_control_state(self, meter_id: int) -> KnownControlState | None:
        """The relay and power limit as last read back from the meter, if ever."""
        with self._session_factory() as session:
            row = session.get(MeterControlState, meter_id)
            if row is None:
                return None
            return KnownControlState(meter_id, row.relay_closed, row.power_limit_w, row.observed_at)

    # --- used by the dispatcher ------------------------------------------------------

    def claim_due(
        self,
        *,
        instance: str,
        limit: int = 100,
        protocols: Collection[MeterProtocol] = (MeterProtocol.MQTT,),
    ) -> list[Outbound]:
        """Act on up to ``limit`` meter heads whose time has come; return what to send.

        Only meters reached over ``protocols`` are looked at: the MQTT dispatcher and the
        Modbus command worker each carry their own meters' messages. The returned
        messages are already recorded as sent (committed) under ``instance``.
        """
        now = self._clock()
        try:
            with self._session_factory() as session, session.begin():
                _take_write_lock(session)
                self._expire_waiting(session, now, limit)
                rows = session.execute(_due_heads(now, limit, protocols)).all()
                if not rows:
                    return []
                known = _known_states(session, [command.meter_id for command, _ in rows])
                outbound = []
                for command, comm_id in rows:
                    message = machine.on_due(
                        command,
                        now,
                        self.policy_for(command.name),
                        known.get(command.meter_id),
                        self._rng,
                    )
                    if message is not None:
                        command.sent_by = instance
                        outbound.append(Outbound(comm_id, message, command.meter_id))
                    self._audit_if_final(session, command)
                return outbound
        except StaleDataError:
            log.info("another worker changed a command while claiming; trying again next tick")
            return []

    def handle_reply(
        self,
        topic: str,
        payload: bytes,
        *,
        correlation_data: bytes | None = None,
        received_at: datetime | None = None,
    ) -> list[Outbound]:
        """Apply one message from the replies topic; see :meth:`handle_replies`."""
        return self.handle_replies([InboundReply(topic, payload, correlation_data, received_at)])

    def handle_replies(self, replies: Sequence[InboundReply]) -> list[Outbound]:
        """Apply messages from the replies topic in one transaction, in order; return the
        follow-up messages (read-backs, re-sends) to publish.

        A reply that cannot be applied (not a reply, CorrelationData not matching its id,
        an unknown correlation id, another meter's id, not awaited) is kept in
        ``rejected_messages`` with the reason and changes nothing else.
        """
        try:
            return self._apply_replies(replies)
        except StaleDataError:
            if len(replies) == 1:
                log.warning("a command changed under its reply; the reply is dropped")
                return []
            # Apply them one by one so one lost race does not hold back the others.
            return [out for reply in replies for out in self.handle_replies([reply])]

    # --- internals -------------------------------------------------------------------

    def _insert(
        self,
        meter_id: int,
        name: CommandName,
        params: dict[str, ParamValue],
        requested_by: str,
        reason: str,
        idempotency_key: str | None,
        lifetime: timedelta,
    ) -> tuple[int, bool]:
        now = self._clock()
        with self._session_factory() as session, session.begin():
            _take_write_lock(session)
            if idempotency_key is not None:
                earlier = session.scalar(
                    select(MeterCommand).where(MeterCommand.idempotency_key == idempotency_key)
                )
                if earlier is not None:
                    if (earlier.meter_id, earlier.name, earlier.params) != (
                        meter_id,
                        name.value,
                        params,
                    ):
                        raise CommandError(
                            "idempotency_key_reused",
                            f"idempotency key {idempotency_key!r} belongs to command "
                            f"{earlier.id} ({earlier.name} for meter {earlier.meter_id})",
                        )
                    return earlier.id, False
            meter = session.get(Meter, meter_id)
            if meter is None:
                raise CommandError("meter_not_found", f"no meter {meter_id}")
            if meter.lifecycle == MeterLifecycle.DECOMMISSIONED.value:
                raise CommandError("meter_decommissioned", f"meter {meter_id} is decommissioned")
            if meter.protocol == MeterProtocol.MQTT.value:
                try:
                    check_meter_id(meter.comm_id)
                except TopicError as exc:
                    raise CommandError(
                        "unsupported_transport", f"meter {meter_id}: {exc}"
                    ) from None
            command = MeterCommand(
                meter_id=meter_id,
                name=name.value,
                params=params,
                correlation_id=uuid.uuid4().hex,
                idempotency_key=idempotency_key,
                requested_by=requested_by,
                reason=reason,
                state=CommandState.QUEUED.value,
                step=CommandStep.SEND.value,
                verify_first=False,
                attempts=0,
                readbacks=0,
                requested_at=now,
                expires_at=now + lifetime,
                next_action_at=now,
            )
            session.add(command)
            session.flush()
            if name in AUDITED_COMMANDS:
                self._audit.record(
                    session,
                    actor=requested_by,
                    action="meter_command.requested",
                    subject=f"meter:{meter_id}",
                    detail={
                        "command_id": command.id,
                        "command": name.value,
                        "params": mask_params(name, params),
                        "reason": reason,
                    },
                )
            return command.id, True

    def _apply_replies(self, replies: Sequence[InboundReply]) -> list[Outbound]:
        now = self._clock()
        with self._session_factory() as session, session.begin():
            _take_write_lock(session)
            parsed: list[tuple[InboundReply, CommandReply, str, int | None]] = []
            for inbound in replies:
                try:
                    reply = parse_reply(inbound.payload)
                except PayloadError as exc:
                    _add_rejected(session, inbound, now, "bad_payload", str(exc))
                    continue
                correlation = inbound.correlation_data
                if correlation is not None and correlation != reply.id.encode():
                    detail = f"CorrelationData {correlation[:64]!r} does not match id {reply.id!r}"
                    _add_rejected(session, inbound, now, "correlation_mismatch", detail)
                    continue
                correlation_id, readback_number = machine.split_wire_id(reply.id)
                parsed.append((inbound, reply, correlation_id, readback_number))
            if not parsed:
                return []
            # Locked in id order, so two batches never wait on each other in a cycle.
            rows = session.execute(
                select(MeterCommand, Meter.comm_id)
                .join(Meter, Meter.id == MeterCommand.meter_id)
                .where(MeterCommand.correlation_id.in_({p[2] for p in parsed}))
                .order_by(MeterCommand.id)
                .with_for_update(of=MeterCommand)
            ).all()
            commands = {command.correlation_id: (command, comm_id) for command, comm_id in rows}
            outbound: list[Outbound] = []
            for inbound, reply, correlation_id, readback_number in parsed:
                found = commands.get(correlation_id)
                if found is None:
                    detail = f"no command has correlation id {reply.id!r}"
                    _add_rejected(session, inbound, now, "unknown_correlation_id", detail)
                    continue
                message = self._apply_reply(session, inbound, now, reply, *found, readback_number)
                if message is not None:
                    outbound.append(Outbound(found[1], message, found[0].meter_id))
            return outbound

    def _apply_reply(
        self,
        session: Session,
        inbound: InboundReply,
        now: datetime,
        reply: CommandReply,
        command: MeterCommand,
        comm_id: str,
        readback_number: int | None,
    ) -> machine.WireMessage | None:
        if reply.meter_id != comm_id:
            detail = (
                f"reply to command {command.id} for meter {comm_id!r} comes from {reply.meter_id!r}"
            )
            _add_rejected(session, inbound, now, "meter_mismatch", detail)
            return None
        try:
            policy = self.policy_for(command.name)
            message = machine.on_reply(command, readback_number, reply, now, policy, self._rng)
        except machine.UnexpectedReply as exc:
            _add_rejected(session, inbound, now, "unexpected_reply", str(exc))
            return None
        if readback_number is not None or command.name == CommandName.READ_NOW.value:
            snapshot = snapshot_from_readback(reply.result)
            if snapshot is not None:
                seen_at = inbound.received_at or now
                _observe(session, command.meter_id, snapshot, seen_at, command.id)
        self._audit_if_final(session, command)
        return message

    def _expire_waiting(self, session: Session, now: datetime, limit: int) -> None:
        """Expire queued commands past their time even when they are not their meter's head."""
        overdue = session.scalars(
            select(MeterCommand)
            .where(MeterCommand.state == CommandState.QUEUED.value, MeterCommand.expires_at <= now)
            .order_by(MeterCommand.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        for command in overdue:
            machine.expire(command, now)
            self._audit_if_final(session, command)

    def _audit_if_final(self, session: Session, command: MeterCommand) -> None:
        state = CommandState(command.state)
        if not state.final or CommandName(command.name) not in AUDITED_COMMANDS:
            return
        self._audit.record(
            session,
            actor=SYSTEM_ACTOR,
            action=f"meter_command.{state.value}",
            subject=f"meter:{command.meter_id}",
            detail={
                "command_id": command.id,
                "command": command.name,
                "attempts": command.attempts,
                "readbacks": command.readbacks,
                "confirmation": command.confirmation,
                "error": command.last_error,
            },
        )


def _take_write_lock(session: Session) -> None:
    """On SQLite, take the database write lock now, before anything is read.

    SQLite has no row locks; a write statement (even one touching no row) makes the
    transaction the one writer, so what it reads next cannot change under it.
    PostgreSQL needs nothing here: its callers lock rows with FOR UPDATE.
    """
    if session.get_bind().dialect.name == "sqlite":
        session.execute(text("UPDATE meter_commands SET id = id WHERE 0 = 1"))


def _due_heads(now: datetime, limit: int, protocols: Collection[MeterProtocol]) -> Any:
    earlier = aliased(MeterCommand)
    is_head = ~exists().where(
        earlier.meter_id == MeterCommand.meter_id,
        earlier.id < MeterCommand.id,
        earlier.state.in_(OPEN_STATES),
    )
    return (
        select(MeterCommand, Meter.comm_id)
        .join(Meter, Meter.id == MeterCommand.meter_id)
        .where(
            MeterCommand.state.in_(OPEN_STATES),
            MeterCommand.next_action_at <= now,
            Meter.protocol.in_([p.value for p in protocols]),
            is_head,
            # A command waits while its meter is known to be offline, instead of spending
            # its attempts on a meter that cannot answer; it expires if it stays so.
            or_(MeterCommand.state == CommandState.SENT.value, Meter.online.is_not(False)),
        )
        .order_by(MeterCommand.next_action_at, MeterCommand.id)
        .limit(limit)
        .with_for_update(of=MeterCommand, skip_locked=True)
    )


def _known_states(session: Session, meter_ids: list[int]) -> dict[int, ControlSnapshot]:
    rows = session.scalars(
        select(MeterControlState).where(MeterControlState.meter_id.in_(set(meter_ids)))
    )
    return {r.meter_id: ControlSnapshot(r.relay_closed, r.power_limit_w) for r in rows}


def _observe(
    session: Session,
    meter_id: int,
    snapshot: ControlSnapshot,
    observed_at: datetime,
    command_id: int,
) -> None:
    """Record what a read-back showed, unless a newer observation is already stored."""
    values = {
        "meter_id": meter_id,
        "relay_closed": snapshot.relay_closed,
        "power_limit_w": snapshot.power_limit_w,
        "observed_at": observed_at,
        "command_id": command_id,
    }
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(MeterControlState).values(**values)
    newer = statement.excluded.observed_at >= MeterControlState.observed_at
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[MeterControlState.meter_id],
            set_={k: statement.excluded[k] for k in values if k != "meter_id"},
            where=newer,
        )
    )


def _add_rejected(
    session: Session, inbound: InboundReply, now: datetime, reason: str, detail: str
) -> None:
    log.info("rejected reply on %s: %s: %s", inbound.topic, reason, detail)
    session.add(
        RejectedMessage(
            source=REJECT_SOURCE,
            topic=inbound.topic,
            payload=inbound.payload,
            reason=f"{reason}: {detail}",
            received_at=inbound.received_at or now,
        )
    )


def _status(command: MeterCommand) -> CommandStatus:
    return CommandStatus(
        id=command.id,
        meter_id=command.meter_id,
        name=command.name,
        params=mask_params(command.name, command.params),
        state=CommandState(command.state),
        step=CommandStep(command.step),
        attempts=command.attempts,
        readbacks=command.readbacks,
        requested_by=command.requested_by,
        reason=command.reason,
        idempotency_key=command.idempotency_key,
        requested_at=command.requested_at,
        expires_at=command.expires_at,
        first_sent_at=command.first_sent_at,
        last_sent_at=command.last_sent_at,
        acknowledged_at=command.acknowledged_at,
        finished_at=command.finished_at,
        last_error=command.last_error,
        confirmation=command.confirmation,
        result=command.result,
    )
