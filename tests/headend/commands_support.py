"""Small factories for the command-queue tests: meters, a settable clock, meter replies."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from gridvend.audit import AuditEntry, AuditLog
from gridvend.broker import BrokerEndpoint
from headend.commands import CommandQueue, RetryPolicy
from headend.commands.dispatcher import CommandDispatcher
from headend.commands.service import Outbound
from headend.models import Meter, MeterLifecycle, MeterProtocol, RejectedMessage
from protocols.mqtt import CommandReply, ReplyStatus, TopicScheme

START = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
REPLIES_TOPIC = "ami/v1/headend/test/replies"

FAST_POLICY = RetryPolicy(
    reply_timeout=timedelta(seconds=5),
    max_attempts=3,
    max_readbacks=2,
    backoff_initial=timedelta(seconds=2),
    backoff_max=timedelta(seconds=8),
    jitter=0,
    default_ttl=timedelta(minutes=5),
)


# For tests against simulated meters: short timeouts, quick retries.
LIVE_POLICY = RetryPolicy(
    reply_timeout=timedelta(seconds=2),
    max_attempts=5,
    max_readbacks=5,
    backoff_initial=timedelta(milliseconds=100),
    backoff_max=timedelta(milliseconds=400),
    jitter=0,
    default_ttl=timedelta(minutes=2),
)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def add_meter(
    session_factory: sessionmaker[Session],
    serial: str,
    *,
    protocol: MeterProtocol = MeterProtocol.MQTT,
    lifecycle: MeterLifecycle = MeterLifecycle.ACTIVE,
) -> int:
    """A meter row as the registry would store it (any lifecycle, no addressing checks)."""
    with session_factory() as session, session.begin():
        meter = Meter(
            serial=serial,
            comm_id=serial,
            protocol=protocol.value,
            lifecycle=lifecycle.value,
            created_at=START,
        )
        session.add(meter)
        session.flush()
        return meter.id


def make_queue(
    session_factory: sessionmaker[Session],
    clock: Clock,
    policy: RetryPolicy = FAST_POLICY,
) -> CommandQueue:
    return CommandQueue(
        session_factory, audit=AuditLog(), policy=policy, clock=clock, rng=random.Random(7)
    )


def reply_to(
    outbound: Outbound,
    *,
    status: ReplyStatus = ReplyStatus.OK,
    result: Mapping[str, str | int | bool] | None = None,
    reason: str | None = None,
    meter_id: str | None = None,
) -> bytes:
    """The payload a meter would answer ``outbound`` with."""
    return CommandReply(
        id=outbound.message.wire_id,
        meter_id=meter_id or outbound.comm_id,
        status=status,
        reason=reason,
        result=dict(result or {}),
    ).to_bytes()


def audit_actions(session_factory: sessionmaker[Session]) -> list[str]:
    with session_factory() as session:
        return list(session.scalars(select(AuditEntry.action).order_by(AuditEntry.id)))


def rejected_reasons(session_factory: sessionmaker[Session]) -> list[str]:
    with session_factory() as session:
        return list(session.scalars(select(RejectedMessage.reason).order_by(RejectedMessage.id)))


def count(session_factory: sessionmaker[Session], model: type) -> int:
    with session_factory() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def dispatcher_for(
    queue: CommandQueue,
    broker: BrokerEndpoint,
    prefix: str,
    instance: str,
    *,
    mqtt_v5: bool | None = None,
) -> CommandDispatcher:
    dispatcher = CommandDispatcher(
        queue,
        broker.host,
        broker.port,
        scheme=TopicScheme(prefix),
        instance=instance,
        mqtt_v5=broker.supports_v5 if mqtt_v5 is None else mqtt_v5,
        poll_interval_s=0.05,
    )
    queue.set_notify(dispatcher.wake)
    return dispatcher


@contextlib.asynccontextmanager
async def running(dispatcher: CommandDispatcher) -> AsyncIterator[CommandDispatcher]:
    task = asyncio.create_task(dispatcher.run())
    try:
        await asyncio.wait_for(dispatcher.connected.wait(), timeout=10)
        yield dispatcher
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
