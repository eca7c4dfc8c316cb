"""The Modbus poller: scheduled and on-demand reads of meters over TCP gateways and
serial lines, feeding the head-end's one ingestion path.

Concurrency rules (see docs/modbus-polling.md):

- one channel = one TCP gateway (host, port) or one serial line; each channel has one
  connection and one asyncio lock, held around each meter's reads, so a channel never
  carries two requests at once (an RS-485 line is half-duplex with one master);
- channels are polled in parallel, at most ``max_parallel_channels`` at a time;
- across processes, a channel is polled only by the worker holding its lease, and a
  meter is talked to only by the worker holding its meter lock (``modbus_leases``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from headend.connectors.modbus_models import ModbusPollOutcome
from headend.connectors.modbus_poll.events import (
    event_points,
    event_state,
    log_request,
    new_events,
)
from headend.connectors.modbus_poll.failures import FailureReason, PollFailure
from headend.connectors.modbus_poll.leases import (
    channel_resource,
    claim_leases,
    lease_holders,
    meter_resource,
    release_leases,
)
from headend.connectors.modbus_poll.link import ModbusLink
from headend.connectors.modbus_poll.policy import BreakerState, CircuitBreaker, RetryPolicy
from headend.connectors.modbus_poll.recorder import PollResult, Recorder
from headend.connectors.modbus_poll.schedule import (
    DEFAULT_GROUPS,
    PollClock,
    PollGroup,
    SystemClock,
    group_points,
    interval_start,
)
from headend.connectors.modbus_poll.targets import PollTarget, TargetError, Transport
from headend.ingest import Ingestor, PolledEvents, PolledReading
from headend.meter_link import ModbusMeterLink
from headend.models import MeterEventRecord
from protocols.modbus import (
    CodecError,
    Point,
    ReadRequest,
    decode_event_log,
    decode_readings,
    meter_totals,
    plan_reads,
)

__all__ = [
    "ChannelBusyError",
    "ModbusPoller",
    "PassReport",
    "PollerConfig",
    "UnknownMeterError",
]

T = TypeVar("T")
log = logging.getLogger(__name__)

WallClock = Callable[[], datetime]


class UnknownMeterError(LookupError):
    """``read_now`` for a meter the poller has no target for."""


class ChannelBusyError(RuntimeError):
    """Another worker holds the lease of the meter's channel, or the meter's lock."""


@dataclass(frozen=True, slots=True)
class PollerConfig:
    """Tuning. Times in seconds are real seconds; ``breaker_cooldown`` is poll-clock time
    (simulated time when the poller runs on an accelerated clock)."""

    timeout_s: float = 1.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    breaker_threshold: int = 3
    breaker_cooldown: timedelta = timedelta(minutes=30)
    lease_ttl: timedelta = timedelta(minutes=2)
    max_parallel_channels: int = 32
    max_leased_channels: int | None = None
    write_batch: int = 25

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError("timeout_s must be positive")
        if self.max_parallel_channels < 1 or self.write_batch < 1:
            raise ValueError("max_parallel_channels and write_batch must be at least 1")
        if self.max_leased_channels is not None and self.max_leased_channels < 1:
            raise ValueError("max_leased_channels must be at least 1 (or None: no cap)")
        if self.lease_ttl <= timedelta(0):
            raise ValueError("lease_ttl must be positive")


@dataclass
class PassReport:
    """What one pass over the fleet for one interval did, in this worker."""

    group: str
    interval_ts: datetime
    stored: int = 0
    failed: int = 0
    already_done: int = 0
    channels_polled: list[str] = field(default_factory=list)
    channels_leased_elsewhere: list[str] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)


@dataclass
class _Channel:
    key: str
    transport: Transport
    link: ModbusLink
    targets: list[PollTarget]
    # Held around each meter's reads: one request in flight on the channel.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class ModbusPoller:
    """Polls Modbus meters on a schedule and on demand; see the module docstring."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        ingestor: Ingestor,
        targets: Iterable[PollTarget],
        *,
        groups: Sequence[PollGroup] = DEFAULT_GROUPS,
        config: PollerConfig | None = None,
        clock: PollClock | None = None,
        wall_clock: WallClock | None = None,
        rng: random.Random | None = None,
        worker_id: str | None = None,
    ) -> None:
        """``clock`` drives the schedule and the readings' ``ts`` (default: wall clock);
        ``wall_clock`` gives ``received_at`` and lease times (default: real UTC now);
        ``rng`` draws the backoff jitter (seed it in tests).

        Raises:
            TargetError: two targets for one meter, or one channel with two settings
                (e.g. a serial port at two baud rates).
            ValueError: two groups with one name.
        """
        self._session_factory = session_factory
        self._config = config or PollerConfig()
        self._clock: PollClock = clock or SystemClock()
        self._wall = wall_clock or (lambda: datetime.now(UTC))
        self._rng = rng or random.Random()
        self.worker_id = worker_id or f"modbus-{uuid.uuid4().hex[:12]}"
        self._groups: dict[str, PollGroup] = {}
        for group in groups:
            if group.name in self._groups:
                raise ValueError(f"poll group {group.name!r} given twice")
            self._groups[group.name] = group
        self._recorder = Recorder(
            session_factory,
            ingestor,
            batch_size=self._config.write_batch,
            on_store_failed=self._store_failed,
        )
        # Reports of the passes under way, to correct for readings the database refused.
        self._reports: dict[tuple[str, datetime], PassReport] = {}
        self._plans: dict[tuple[str, str], tuple[ReadRequest, ...]] = {}
        self._breakers: dict[int, CircuitBreaker] = {}
        self._channels: dict[str, _Channel] = {}
        self._targets: dict[int, PollTarget] = {}
        # Meters whose lock this worker holds for running passes (count of passes).
        self._pass_locked: Counter[int] = Counter()
        # The newest event sequence number stored (or being stored) per meter: the event
        # log is read only when the meter's count differs. Loaded from the database.
        self._event_seqs: dict[int, int] = {}
        self.set_targets(targets)

    # --- fleet --------------------------------------------------------------------------

    def set_targets(self, targets: Iterable[PollTarget]) -> None:
        """Replace the fleet. Channels no longer used are closed.

        Raises:
            TargetError: see the constructor; the fleet is then unchanged.
        """
        by_meter: dict[int, PollTarget] = {}
        by_channel: dict[str, list[PollTarget]] = {}
        transports: dict[str, Transport] = {}
        for target in targets:
            if target.meter_id in by_meter:
                raise TargetError(f"meter {target.meter_id} has two targets")
            known = transports.setdefault(target.channel, target.transport)
            if known != target.transport:
                raise TargetError(
                    f"channel {target.channel} is configured two ways: "
                    f"{known} and {target.transport}"
                )
            units = {t.unit_id for t in by_channel.get(target.channel, [])}
            if target.unit_id in units:
                raise TargetError(f"unit id {target.unit_id} is used twice on {target.channel}")
            by_meter[target.meter_id] = target
            by_channel.setdefault(target.channel, []).append(target)
        for key in list(self._channels):
            old = self._channels[key]
            if key not in by_channel or old.transport != transports[key]:
                old.link.close()
                del self._channels[key]
        for key, members in by_channel.items():
            channel = self._channels.get(key)
            if channel is None:
                channel = _Channel(
                    key,
                    transports[key],
                    ModbusLink(transports[key], timeout_s=self._config.timeout_s),
                    members,
                )
                self._channels[key] = channel
            channel.targets = sorted(members, key=lambda t: t.unit_id)
        self._targets = by_meter

    @property
    def targets(self) -> tuple[PollTarget, ...]:
        return tuple(self._targets.values())

    @property
    def group_names(self) -> frozenset[str]:
        """The poll groups ``read_now`` accepts."""
        return frozenset(self._groups)

    def breaker_state(self, meter_id: int) -> BreakerState:
        breaker = self._breakers.get(meter_id)
        return BreakerState.CLOSED if breaker is None else breaker.state

    # --- running ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Poll every scheduled group at each of its interval boundaries until ``stop``
        is set, then finish the pass under way, write everything and close the
        connections. Cancelling the task stops at once (a pass cut short leaves its
        remaining meters unpolled for that interval, with no outcome).

        The interval in progress at start is polled at once (a restarted or newly
        leased worker catches up; meters already done for it are skipped). Intervals
        are never skipped: a pass that starts after its interval ended records
        DEADLINE failures rather than leaving a silent gap.
        """
        stop = stop or asyncio.Event()
        tasks = [
            asyncio.create_task(self._run_group(group, stop), name=f"modbus-poll-{group.name}")
            for group in self._groups.values()
            if group.interval is not None
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.close()

    async def _run_group(self, group: PollGroup, stop: asyncio.Event) -> None:
        assert group.interval is not None
        interval_ts = interval_start(self._clock.now(), group.interval)
        while not stop.is_set():
            try:
                await self.poll_interval(group.name, interval_ts)
            except Exception:
                # A database outage must not end the schedule; the next pass retries.
                log.exception("Modbus pass %s %s failed", group.name, interval_ts.isoformat())
            interval_ts += group.interval
            sleeper = asyncio.ensure_future(self._clock.sleep_until(interval_ts))
            stopper = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                stopper.cancel()

    async def close(self) -> None:
        """Write what is pending and close every connection."""
        await self._recorder.drain()
        for channel in self._channels.values():
            channel.link.close()

    # --- one pass -----------------------------------------------------------------------

    async def poll_interval(self, group: str, interval_ts: datetime) -> PassReport:
        """Poll every meter of every channel this worker can lease, for ``group`` and the
        interval starting at ``interval_ts``; meters with a stored poll for that interval
        are skipped. Returns once all results are written.

        Raises:
            KeyError: unknown group.
            ValueError: the group is on-demand only, or ``interval_ts`` is not a boundary.
        """
        poll_group = self._groups[group]
        if poll_group.interval is None:
            raise ValueError(f"group {group!r} is polled on demand only")
        if interval_start(interval_ts, poll_group.interval) != interval_ts:
            raise ValueError(f"{interval_ts.isoformat()} is not a {group} interval boundary")
        report = PassReport(group, interval_ts)
        self._reports[(group, interval_ts)] = report
        try:
            return await self._pass(poll_group, interval_ts, report)
        finally:
            del self._reports[(group, interval_ts)]

    def _store_failed(self, result: PollResult) -> None:
        # Its events were not stored either: read the log again next time.
        self._event_seqs.pop(result.meter_id, None)
        report = self._reports.get((result.group, result.interval_ts))
        if report is not None and result.failure is not None:
            report.stored -= 1
            report.failed += 1
            report.reasons[result.failure.reason.value] += 1

    async def _pass(
        self, poll_group: PollGroup, interval_ts: datetime, report: PassReport
    ) -> PassReport:
        group = poll_group.name
        assert poll_group.interval is not None
        deadline = interval_ts + poll_group.interval
        work = {
            channel.key: [t for t in channel.targets if self._plan(t, poll_group)]
            for channel in self._channels.values()
        }
        work = {key: targets for key, targets in work.items() if targets}
        if not work:
            return report
        begun = await asyncio.to_thread(self._begin_pass, work, group, interval_ts)
        for key in work.keys() - begun.keys():
            self._channels[key].link.close()
            report.channels_leased_elsewhere.append(key)
        locked = {m for meters, _ in begun.values() for m in meters}
        held = [channel_resource(k) for k in begun] + [meter_resource(m) for m in locked]
        self._pass_locked.update(locked)
        renewer = asyncio.create_task(self._keep_leases(held))
        limit = asyncio.Semaphore(self._config.max_parallel_channels)

        async def one(key: str) -> None:
            async with limit:
                meters, done = begun[key]
                await self._poll_channel(
                    self._channels[key],
                    work[key],
                    meters,
                    done,
                    poll_group,
                    interval_ts,
                    deadline,
                    report,
                )

        try:
            await asyncio.gather(*(one(key) for key in sorted(begun)))
            # Outcomes must be stored before the meter locks go, so that the next
            # holder sees these meters as done and does not poll them again.
            await self._recorder.drain()
        finally:
            renewer.cancel()
            self._pass_locked.subtract(locked)
            # A meter another pass of this worker still polls keeps its lock.
            free = [m for m in locked if self._pass_locked[m] <= 0]
            for meter_id in free:
                del self._pass_locked[meter_id]
            await asyncio.to_thread(self._release, [meter_resource(m) for m in free])
        return report

    async def _poll_channel(
        self,
        channel: _Channel,
        targets: Sequence[PollTarget],
        locked: set[int],
        done: set[int],
        group: PollGroup,
        interval_ts: datetime,
        deadline: datetime,
        report: PassReport,
    ) -> None:
        report.channels_polled.append(channel.key)
        for target in targets:
            if target.meter_id in done:
                report.already_done += 1
                continue
            if target.meter_id not in locked:
                now = self._wall()
                result = PollResult(
                    target.meter_id,
                    group.name,
                    interval_ts,
                    channel.key,
                    self.worker_id,
                    now,
                    now,
                    attempts=0,
                    requests=0,
                    failure=PollFailure(
                        FailureReason.METER_BUSY, "another worker holds the meter lock"
                    ),
                )
            else:
                result = await self._poll_meter(channel, target, group, interval_ts, deadline)
            self._count(report, result)
            self._recorder.submit(result)

    @staticmethod
    def _count(report: PassReport, result: PollResult) -> None:
        if result.failure is None:
            report.stored += 1
        else:
            report.failed += 1
            report.reasons[result.failure.reason.value] += 1

    def _begin_pass(
        self, work: dict[str, list[PollTarget]], group: str, interval_ts: datetime
    ) -> dict[str, tuple[set[int], set[int]]]:
        """In one transaction: lease channels (those already held first, then free ones
        up to ``max_leased_channels``), lock their meters, and find those already polled
        for the interval. Returns {channel: (locked meter ids, done meter ids)}.
        """
        now = self._wall()
        ttl = self._config.lease_ttl
        cap = self._config.max_leased_channels
        with self._session_factory() as session, session.begin():
            resources = {channel_resource(key): key for key in work}
            holders = lease_holders(session, resources, now)
            mine = [r for r in resources if holders.get(r) == self.worker_id]
            won = claim_leases(session, mine, self.worker_id, now, ttl)
            for resource in sorted(r for r in resources if r not in holders):
                if cap is not None and len(won) >= cap:
                    break
                won |= claim_leases(session, [resource], self.worker_id, now, ttl)
            channels = [resources[r] for r in won]
            meter_ids = [t.meter_id for key in channels for t in work[key]]
            claimed = claim_leases(
                session, [meter_resource(m) for m in meter_ids], self.worker_id, now, ttl
            )
            locked = {m for m in meter_ids if meter_resource(m) in claimed}
            done: set[int] = set()
            if locked:
                done = set(
                    session.execute(
                        select(ModbusPollOutcome.meter_id).where(
                            ModbusPollOutcome.meter_id.in_(list(locked)),
                            ModbusPollOutcome.poll_group == group,
                            ModbusPollOutcome.interval_ts == interval_ts,
                            ModbusPollOutcome.ok.is_(True),
                        )
                    ).scalars()
                )
            if self._groups[group].events:
                self._load_event_seqs(session, locked - done)
        return {
            key: (
                {t.meter_id for t in work[key]} & locked,
                {t.meter_id for t in work[key]} & done,
            )
            for key in channels
        }

    def _load_event_seqs(self, session: Session, meter_ids: Iterable[int]) -> None:
        """Fill the newest stored event sequence number of meters not yet known (0: none)."""
        wanted = [
            m
            for m in meter_ids
            if m not in self._event_seqs and event_points(self._targets[m].modbus_profile)
        ]
        if not wanted:
            return
        rows = session.execute(
            select(MeterEventRecord.meter_id, func.max(MeterEventRecord.seq))
            .where(MeterEventRecord.meter_id.in_(wanted))
            .group_by(MeterEventRecord.meter_id)
        )
        found = {meter_id: seq for meter_id, seq in rows}
        for meter_id in wanted:
            self._event_seqs[meter_id] = int(found.get(meter_id) or 0)

    def _load_event_seq(self, meter_id: int) -> None:
        with self._session_factory() as session:
            self._load_event_seqs(session, [meter_id])

    async def _keep_leases(self, resources: list[str]) -> None:
        """Renew this pass's leases every third of their ttl while it runs."""
        period = self._config.lease_ttl.total_seconds() / 3
        while True:
            await asyncio.sleep(period)
            await asyncio.to_thread(self._claim, resources)

    def _release(self, resources: list[str]) -> None:
        with self._session_factory() as session, session.begin():
            release_leases(session, resources, self.worker_id)

    # --- one meter ----------------------------------------------------------------------

    def _plan(self, target: PollTarget, group: PollGroup) -> tuple[ReadRequest, ...]:
        key = (target.profile, group.name)
        plan = self._plans.get(key)
        if plan is None:
            points: tuple[Point, ...] = group_points(target.modbus_profile, group)
            if points and group.events:
                points += event_points(target.modbus_profile)
            plan = plan_reads(target.modbus_profile, points) if points else ()
            self._plans[key] = plan
        return plan

    def _breaker(self, meter_id: int) -> CircuitBreaker:
        breaker = self._breakers.get(meter_id)
        if breaker is None:
            breaker = CircuitBreaker(self._config.breaker_threshold, self._config.breaker_cooldown)
            self._breakers[meter_id] = breaker
        return breaker

    async def _poll_meter(
        self,
        channel: _Channel,
        target: PollTarget,
        group: PollGroup,
        ts: datetime,
        deadline: datetime | None,
        *,
        on_demand: bool = False,
    ) -> PollResult:
        started = self._wall()
        if deadline is not None and self._clock.now() >= deadline:
            # Not a word was sent: this says nothing about the meter, so the breaker
            # is left alone.
            return PollResult(
                target.meter_id,
                group.name,
                ts,
                channel.key,
                self.worker_id,
                started,
                started,
                attempts=0,
                requests=0,
                failure=PollFailure(
                    FailureReason.DEADLINE, f"interval ended at {deadline.isoformat()}"
                ),
            )
        breaker = self._breaker(target.meter_id)
        attempts_allowed = self._config.retry.attempts
        if not on_demand:
            if not breaker.allow(self._clock.now()):
                return PollResult(
                    target.meter_id,
                    group.name,
                    ts,
                    channel.key,
                    self.worker_id,
                    started,
                    started,
                    attempts=0,
                    requests=0,
                    failure=PollFailure(
                        FailureReason.CIRCUIT_OPEN,
                        f"{breaker.consecutive_failures} consecutive failed polls; open since "
                        f"{breaker.opened_at.isoformat() if breaker.opened_at else '?'}",
                    ),
                )
            if breaker.state is BreakerState.HALF_OPEN:
                attempts_allowed = 1  # the probe: one try decides
        plan = self._plan(target, group)
        profile = target.modbus_profile
        errors: list[PollFailure] = []
        requests = 0
        attempt = 0
        final: PollFailure | None = None
        while attempt < attempts_allowed:
            if deadline is not None and self._clock.now() >= deadline:
                last = f"; last error: {errors[-1]}" if errors else ""
                final = PollFailure(
                    FailureReason.DEADLINE, f"interval ended at {deadline.isoformat()}{last}"
                )
                break
            attempt += 1
            events: PolledEvents | None = None
            event_count: int | None = None
            try:
                async with channel.lock:
                    replies = []
                    for request in plan:
                        requests += 1
                        replies.append((request, await channel.link.read(target.unit_id, request)))
                    if group.events:
                        events, event_count, log_reads = await self._read_events(
                            channel, target, replies, errors
                        )
                        requests += log_reads
                values = {
                    q: v
                    for q, v in meter_totals(decode_readings(profile, replies)).items()
                    if q in group.quantities
                }
            except PollFailure as failure:
                errors.append(failure)
                if not failure.retryable:
                    break
            except CodecError as exc:
                errors.append(PollFailure(FailureReason.BAD_REPLY, f"unit {target.unit_id}: {exc}"))
                break
            else:
                breaker.record_success()
                if event_count is not None:
                    # Set now so the next poll does not read the log again;
                    # _store_failed undoes it if the events are not stored.
                    self._event_seqs[target.meter_id] = event_count
                received = self._wall()
                reading = PolledReading(target.meter_id, ts, values, received, source="modbus")
                return PollResult(
                    target.meter_id,
                    group.name,
                    ts,
                    channel.key,
                    self.worker_id,
                    started,
                    received,
                    attempts=attempt,
                    requests=requests,
                    reading=reading,
                    errors=tuple(errors),
                    events=events,
                )
            if attempt < attempts_allowed:
                await asyncio.sleep(self._config.retry.delay(attempt, self._rng))
        breaker.record_failure(self._clock.now())
        return PollResult(
            target.meter_id,
            group.name,
            ts,
            channel.key,
            self.worker_id,
            started,
            self._wall(),
            attempts=attempt,
            requests=requests,
            failure=final or errors[-1],
            errors=tuple(errors),
        )

    async def _read_events(
        self,
        channel: _Channel,
        target: PollTarget,
        replies: Sequence[tuple[ReadRequest, Sequence[int] | Sequence[bool]]],
        errors: list[PollFailure],
    ) -> tuple[PolledEvents | None, int | None, int]:
        """The meter's new events, read under the channel lock right after its energy
        reads, the event count they bring the meter to (None: nothing read) and the
        number of requests sent (0 or 1). A failed log read is added to
        ``errors`` and the reading goes on without events: the log is read again next
        poll, as the stored sequence number did not move."""
        profile = target.modbus_profile
        meter_id = target.meter_id
        try:
            state = event_state(profile, replies)
        except CodecError as exc:
            errors.append(PollFailure(FailureReason.BAD_REPLY, f"unit {target.unit_id}: {exc}"))
            return None, None, 0
        if state is None:
            return None, None, 0
        if meter_id not in self._event_seqs:
            await asyncio.to_thread(self._load_event_seq, meter_id)
        last_seq = self._event_seqs[meter_id]
        if state.event_count == last_seq:
            return None, None, 0
        request = log_request(profile)
        try:
            data = await channel.link.read(target.unit_id, request)
            records = decode_event_log(profile, request, [int(word) for word in data])
        except PollFailure as failure:
            errors.append(failure)
            return None, None, 1
        except CodecError as exc:
            errors.append(PollFailure(FailureReason.BAD_REPLY, f"unit {target.unit_id}: {exc}"))
            return None, None, 1
        found = new_events(records, state, last_seq)
        polled = PolledEvents(meter_id, found.events, self._wall(), found.gap)
        return polled, state.event_count, 1

    # --- on demand ----------------------------------------------------------------------

    async def read_now(self, meter_id: int, group: str = "instantaneous") -> PolledReading:
        """Read ``group`` from one meter now, store it and return it (``ts`` = now on the
        poll clock). The read waits for the channel between two meters of a running
        pass, never interleaving requests on the line. Retries as a scheduled poll does;
        the circuit breaker does not block it, but its result updates the breaker.

        Raises:
            UnknownMeterError: no target for ``meter_id``.
            KeyError: unknown group.
            ChannelBusyError: another worker holds the channel or the meter.
            PollFailure: the read failed (its outcome is recorded).
        """
        target = self._targets.get(meter_id)
        if target is None:
            raise UnknownMeterError(f"meter {meter_id} is not polled over Modbus by this worker")
        poll_group = self._groups[group]
        if not self._plan(target, poll_group):
            raise PollFailure(
                FailureReason.BAD_REPLY, f"profile {target.profile} has no {group} quantities"
            )
        async with self._holding(target) as channel:
            result = await self._poll_meter(
                channel, target, poll_group, self._clock.now(), None, on_demand=True
            )
            result = await self._recorder.write_now(result)
        if result.failure is not None:
            self._event_seqs.pop(meter_id, None)
            raise result.failure
        assert result.reading is not None
        return result.reading

    async def with_meter_link(
        self, meter_id: int, action: Callable[[ModbusMeterLink], Awaitable[T]]
    ) -> T:
        """Run ``action`` on the meter inside :meth:`meter_link` (commands and other
        exchanges that are not readings). Raises as :meth:`meter_link` and ``action``."""
        async with self.meter_link(meter_id) as link:
            return await action(link)

    @contextlib.asynccontextmanager
    async def meter_link(self, meter_id: int) -> AsyncIterator[ModbusMeterLink]:
        """The meter over this worker's connection to its channel, holding the channel (one
        request in flight on the line, taken between two meters of a running pass) and the
        meter's lock for the whole block, as :meth:`read_now` does for one read.

        Raises:
            UnknownMeterError: no target for ``meter_id``.
            ChannelBusyError: another worker holds the channel or the meter.
            PollFailure: the channel cannot be opened.
        """
        target = self._targets.get(meter_id)
        if target is None:
            raise UnknownMeterError(f"meter {meter_id} is not polled over Modbus by this worker")
        async with self._holding(target) as channel, channel.lock:
            client = await channel.link.connected_client()
            yield ModbusMeterLink(client, target.modbus_profile, target.unit_id)

    @contextlib.asynccontextmanager
    async def _holding(self, target: PollTarget) -> AsyncIterator[_Channel]:
        """The channel's and the meter's leases for an on-demand exchange (the meter's is
        already held while a pass of this worker covers it)."""
        meter_id = target.meter_id
        channel = self._channels[target.channel]
        held_by_pass = self._pass_locked[meter_id] > 0
        resources = [channel_resource(channel.key)]
        if not held_by_pass:
            resources.append(meter_resource(meter_id))
        won = await asyncio.to_thread(self._claim, resources)
        if set(resources) - won:
            holders = await asyncio.to_thread(self._holders, resources)
            if not held_by_pass and meter_resource(meter_id) in won:
                await asyncio.to_thread(self._release, [meter_resource(meter_id)])
            raise ChannelBusyError(f"meter {meter_id}: held by {holders}")
        try:
            yield channel
        finally:
            if not held_by_pass:
                await asyncio.to_thread(self._release, [meter_resource(meter_id)])

    def _claim(self, resources: list[str]) -> set[str]:
        with self._session_factory() as session, session.begin():
            return claim_leases(
                session, resources, self.worker_id, self._wall(), self._config.lease_ttl
            )

    def _holders(self, resources: list[str]) -> dict[str, str]:
        with self._session_factory() as session:
            return lease_holders(session, resources, self._wall())
