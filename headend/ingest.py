"""The one ingestion path: every inbound meter message (MQTT today, Modbus polls next) ends here.

A batch is written in one transaction. Nothing is dropped: a message that cannot be
accepted (foreign topic, malformed payload, unknown meter, a second value for a stored
reading) is kept whole in ``rejected_messages`` with its reason, and counted.
"""

from __future__ import annotations

import bisect
import functools
import json
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import Insert, Table, bindparam, delete, func, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from headend.bulk_read import BulkLookup
from headend.bulk_write import BulkStatement
from headend.consumption import (
    IntervalConsumption,
    derivation_span,
    interval_consumption,
    superseding,
    withdrawals,
)
from headend.estimation import estimate_gaps
from headend.events import event_severity
from headend.models import (
    READING_VALUE_TYPE,
    ConsumptionEventRecord,
    Meter,
    MeterEventRecord,
    MeterLifecycle,
    MeterLifecycleChange,
    Reading,
    ReadingEstimate,
    RejectedMessage,
)
from headend.sql_lists import among
from headend.validation import (
    DEFAULT_SETTINGS,
    Flag,
    MeterProfile,
    Quality,
    RegisterRead,
    StoredRead,
    VeeSettings,
    Verdict,
    floor_boundary,
    validate_reads,
)
from headend.validation import Status as VerdictStatus
from protocols.mqtt import (
    MeterChannel,
    MeterEvent,
    PayloadError,
    Status,
    TelemetryReport,
    TopicError,
    TopicScheme,
    parse_event,
    parse_status,
    parse_telemetry,
)
from protocols.quantities import Kind, Quantity

log = logging.getLogger(__name__)


class RejectReason(StrEnum):
    BAD_TOPIC = "bad_topic"
    BAD_PAYLOAD = "bad_payload"
    UNKNOWN_METER = "unknown_meter"
    CONFLICTING_DUPLICATE = "conflicting_duplicate"
    # Validation rejected the read (bad timestamp, value, unit...): see the flags.
    INVALID_READING = "invalid_reading"
    # A polled meter's event log wrapped past events before they were read.
    EVENTS_LOST = "events_lost"


@dataclass(frozen=True, slots=True)
class InboundMessage:
    topic: str
    payload: bytes
    received_at: datetime
    source: str = "mqtt"


@dataclass
class IngestStats:
    """Running counters, shown by the health endpoint."""

    messages: int = 0
    readings_stored: int = 0
    readings_duplicate: int = 0
    events_stored: int = 0
    status_updates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    # Of readings_stored: the ones validation flagged (held for an operator).
    readings_flagged: int = 0
    estimates_stored: int = 0
    consumption_published: int = 0

    def add(self, other: IngestStats) -> None:
        self.messages += other.messages
        self.readings_stored += other.readings_stored
        self.readings_duplicate += other.readings_duplicate
        self.readings_flagged += other.readings_flagged
        self.estimates_stored += other.estimates_stored
        self.consumption_published += other.consumption_published
        self.events_stored += other.events_stored
        self.status_updates += other.status_updates
        self.rejected.update(other.rejected)

    def as_dict(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "readings_stored": self.readings_stored,
            "readings_duplicate": self.readings_duplicate,
            "events_stored": self.events_stored,
            "status_updates": self.status_updates,
            "rejected": dict(self.rejected),
            "readings_flagged": self.readings_flagged,
            "estimates_stored": self.estimates_stored,
            "consumption_published": self.consumption_published,
        }


@dataclass(frozen=True, slots=True)
class PolledReading:
    """Register values a poller (Modbus) read from a registered meter at ``ts``."""

    meter_id: int
    ts: datetime
    values: Mapping[Quantity, Decimal]
    received_at: datetime
    source: str = "modbus"

    def as_message(self) -> InboundMessage:
        """The poll in the MQTT telemetry shape, so a rejected one is kept like any other."""
        payload = json.dumps(
            {"ts": self.ts.isoformat(), "values": {q.value: str(v) for q, v in self.values.items()}}
        ).encode()
        return InboundMessage(
            topic=f"{self.source}/meters/{self.meter_id}",
            payload=payload,
            received_at=self.received_at,
            source=self.source,
        )


@dataclass(frozen=True, slots=True)
class PolledEvents:
    """Events a poller (Modbus) read from a registered meter's event log, and ``gap``: why
    events the meter logged could not be read ("" when none were missed)."""

    meter_id: int
    events: Sequence[MeterEvent]
    received_at: datetime
    gap: str = ""
    source: str = "modbus"


@dataclass(frozen=True, slots=True)
class _Rejection:
    """A message to keep in ``rejected_messages``, found by checks that need no database
    (so possibly before the transaction; it is recorded inside, with the batch)."""

    message: InboundMessage
    reason: RejectReason
    detail: str


@dataclass(slots=True)  # not frozen: built per message, never shared
class _PreparedReads:
    """A telemetry message's storable reads as meter ``meter_id``'s, and the rejections of
    what cannot be stored (see ``_prepare_reads``)."""

    meter_id: int
    items: list[_Incoming]
    rejections: list[_Rejection]


@dataclass(slots=True)  # not frozen: built per message, never shared
class _ReadingSet:
    meter_id: int
    ts: datetime
    values: Mapping[Quantity, Decimal]
    message: InboundMessage
    # Built before the transaction, for the meter id it was then thought to have.
    prepared: _PreparedReads | None = None


@dataclass(slots=True)  # not frozen: built per message, never shared
class _Parsed:
    message: InboundMessage
    meter_comm_id: str
    body: TelemetryReport | MeterEvent | Status
    prepared: _PreparedReads | None = None  # telemetry only, see Ingestor._prepare_hinted


class Ingestor:
    """Turns batches of inbound messages into stored readings, events and meter status."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        scheme: TopicScheme,
        *,
        settings: VeeSettings = DEFAULT_SETTINGS,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        """``settings`` are validation's thresholds. ``clock`` gives "now" for validation
        and the stream's ``created_at``; without it a read is judged against the time its
        message was received (a replayed batch is judged as it was the first time)."""
        self._session_factory = session_factory
        self._scheme = scheme
        self._settings = settings
        self._clock = clock
        self.stats = IngestStats()
        # comm id -> meter id as the registry said in earlier batches. Only a hint: each
        # batch still reads (and on PostgreSQL locks) the meter rows, and a message whose
        # meter id turns out different is prepared again.
        self._meter_id_hints: dict[str, int] = {}

    def ingest(self, messages: Sequence[InboundMessage]) -> IngestStats:
        """Store one batch atomically and return what happened to it.

        Raises only for infrastructure failures (database unreachable); the batch is then
        not stored at all and may be retried as a whole.
        """
        batch = IngestStats(messages=len(messages))
        # Database-independent work first: on SQLite the transaction holds the database's
        # one write lock from its first statement, and other workers wait for it.
        parsed, rejections = self._parse_all(messages)
        self._prepare_hinted(parsed)
        comm_ids = {p.meter_comm_id for p in parsed}
        with self._session_factory() as session, session.begin():
            self._record(session, batch, rejections)
            meter_ids = self._meter_ids(session, comm_ids)
            self._learn_meter_ids(comm_ids, meter_ids)
            accepted: list[tuple[_Parsed, int]] = []
            for item in parsed:
                meter_id = meter_ids.get(item.meter_comm_id)
                if meter_id is None:
                    self._reject(
                        session,
                        batch,
                        item.message,
                        RejectReason.UNKNOWN_METER,
                        f"meter {item.meter_comm_id!r} is not in the registry",
                    )
                else:
                    accepted.append((item, meter_id))
            reading_sets = [
                _ReadingSet(meter_id, item.body.ts, item.body.values, item.message, item.prepared)
                for item, meter_id in accepted
                if isinstance(item.body, TelemetryReport)
            ]
            self._store_readings(session, batch, reading_sets)
            self._store_events(
                session,
                batch,
                [
                    (meter_id, item.body, item.message.received_at)
                    for item, meter_id in accepted
                    if isinstance(item.body, MeterEvent)
                ],
            )
            self._apply_status(session, batch, accepted)
        self.stats.add(batch)
        return batch

    def ingest_polled(
        self, polls: Sequence[PolledReading], events: Sequence[PolledEvents] = ()
    ) -> IngestStats:
        """Store polled readings and events of registered meters in one transaction (see
        ``ingest``); events are stored and graded exactly as MQTT meters' events are."""
        batch = IngestStats(messages=len(polls))
        # Prepared before the transaction (see ingest): a poll knows its meter id.
        reading_sets = [_polled_set(p) for p in polls]
        with self._session_factory() as session, session.begin():
            known = self._store_readings(session, batch, reading_sets)
            if events:
                self._store_polled_events(session, batch, events, known)
            last_seen: dict[int, datetime] = {}
            for poll in polls:
                if poll.meter_id not in known:
                    continue  # quarantined as an unknown meter
                _keep_latest(last_seen, poll.meter_id, poll.received_at)
            # A meter that answered a poll is online.
            self._update_meters(session, last_seen, dict.fromkeys(last_seen, True))
        self.stats.add(batch)
        return batch

    def _parse_all(
        self, messages: Sequence[InboundMessage]
    ) -> tuple[list[_Parsed], list[_Rejection]]:
        parsed: list[_Parsed] = []
        rejections: list[_Rejection] = []
        for message in messages:
            try:
                meter_comm_id, channel = self._scheme.parse_meter_topic(message.topic)
            except TopicError as exc:
                rejections.append(_Rejection(message, RejectReason.BAD_TOPIC, str(exc)))
                continue
            try:
                body: TelemetryReport | MeterEvent | Status
                if channel is MeterChannel.TELEMETRY:
                    body = parse_telemetry(message.payload)
                elif channel is MeterChannel.EVENTS:
                    body = parse_event(message.payload)
                elif channel is MeterChannel.STATUS:
                    body = parse_status(message.payload)
                else:
                    raise PayloadError(f"the head-end does not consume {channel.value} messages")
            except PayloadError as exc:
                rejections.append(_Rejection(message, RejectReason.BAD_PAYLOAD, str(exc)))
                continue
            parsed.append(_Parsed(message, meter_comm_id, body))
        return parsed, rejections

    def _prepare_hinted(self, parsed: list[_Parsed]) -> None:
        """Prepare the reads of telemetry from comm ids with a meter id hint (before the
        transaction; ``_store_readings`` uses them only if the registry agrees)."""
        hints = self._meter_id_hints
        for item in parsed:
            meter_id = hints.get(item.meter_comm_id)
            if meter_id is not None and isinstance(item.body, TelemetryReport):
                body = item.body
                item.prepared = _prepare_reads(meter_id, body.ts, body.values, item.message)

    def _learn_meter_ids(self, comm_ids: set[str], meter_ids: dict[str, int]) -> None:
        """Hints for the next batches: the registry's answer for ``comm_ids``."""
        hints = self._meter_id_hints
        for comm_id in comm_ids - meter_ids.keys():
            hints.pop(comm_id, None)  # no longer registered (or never was)
        hints.update(meter_ids)

    @staticmethod
    def _meter_ids(session: Session, comm_ids: set[str]) -> dict[str, int]:
        if not comm_ids:
            return {}
        # Lock every meter of the batch now, in id order (PostgreSQL): readings, events and
        # status all write to them, and two workers taking them in different orders could
        # deadlock. See _load_profiles for why readings need the lock.
        rows = session.execute(_LOCK_METERS_BY_COMM_ID, {"comm_ids": list(comm_ids)})
        return {comm_id: meter_id for comm_id, meter_id in rows}

    def _store_readings(
        self, session: Session, batch: IngestStats, reading_sets: list[_ReadingSet]
    ) -> set[int]:
        """Validate, store, re-estimate and publish, as docs/readings.md "Ingestion" says.

        Each meter's reads are judged together (``validate_reads``) against the stored reads
        around them, loaded in bulk for the whole batch. Accepted and flagged reads take
        their (meter, quantity, ts) slot in ``readings`` with the verdict; rejected reads go
        to ``rejected_messages`` with the verdict's flags and reason; duplicates are counted.
        Then every cumulative register that gained real reads is re-derived over its
        derivation span: estimates replaced, new and corrected consumption records appended.
        Returns the ids of the registered meters among the sets' meters.
        """
        if not reading_sets:
            return set()
        profiles = _load_profiles(session, {rs.meter_id for rs in reading_sets})
        incoming: dict[int, list[_Incoming]] = {}
        for rs in reading_sets:
            if rs.meter_id not in profiles:
                detail = f"meter id {rs.meter_id} is not in the registry"
                self._reject(session, batch, rs.message, RejectReason.UNKNOWN_METER, detail)
                continue
            prepared = rs.prepared
            if prepared is None or prepared.meter_id != rs.meter_id:
                prepared = _prepare_reads(rs.meter_id, rs.ts, rs.values, rs.message)
            self._record(session, batch, prepared.rejections)
            if prepared.items:
                incoming.setdefault(rs.meter_id, []).extend(prepared.items)
        if not incoming:
            return set(profiles)

        registers: dict[_Key, list[datetime]] = {}
        for items in incoming.values():
            for item in items:
                registers.setdefault(item.key, []).append(item.utc)
        stored = _StoredReads(session, profiles, self._settings)
        stored.load({key: (min(times), max(times)) for key, times in registers.items()}, incoming)

        rows: list[dict[str, Any]] = []
        changed: dict[_Key, list[datetime]] = {}
        for meter_id, items in incoming.items():
            now = self._clock() if self._clock else max(i.message.received_at for i in items)
            verdicts = validate_reads(
                [i.read for i in items],
                stored.context(meter_id),
                profiles[meter_id],
                now,
                self._settings,
            )
            for item, verdict in zip(items, verdicts, strict=True):
                key = item.key
                if verdict.status is VerdictStatus.DUPLICATE:
                    batch.readings_duplicate += 1
                    continue
                kept = verdict.to_stored()
                if verdict.status is VerdictStatus.REJECTED or kept is None:
                    self._reject_verdict(session, batch, item, verdict, stored)
                    continue
                stored.add(key, kept)
                if kept.quality is Quality.FLAGGED:
                    batch.readings_flagged += 1
                if kept.quantity in _CUMULATIVE:
                    changed.setdefault(key, []).append(kept.timestamp)
                rows.append(
                    {
                        "meter_id": meter_id,
                        "quantity": key[1],
                        "ts": kept.timestamp,
                        "value": kept.value,
                        "source": item.message.source,
                        "received_at": item.message.received_at,
                        "quality": _QUALITY_NAMES[kept.quality],
                        # Most reads have no findings: skip building empty strings.
                        "flags": _flags(verdict) if verdict.findings else "",
                        "reason": verdict.reason if verdict.findings else "",
                    }
                )
        if rows:
            # Straight to the driver (see headend.bulk_write): SQLAlchemy's per-row parameter
            # processing cost more than the database's insert. Both drivers sum an
            # executemany's rowcount, and a skipped conflicting row changes nothing.
            connection = session.connection()
            insert_readings = _bulk_insert_ignoring(connection.dialect.name, _table(Reading))
            inserted = insert_readings.execute(connection, rows)
            batch.readings_stored += inserted
            # The meter rows are locked, so no other worker can have stored these first; a
            # shortfall would mean a writer outside the ingestion path. Count, don't lose.
            batch.readings_duplicate += len(rows) - inserted
        if changed:
            self._republish(session, batch, stored, changed)
        return set(profiles)

    def _reject_verdict(
        self,
        session: Session,
        batch: IngestStats,
        item: _Incoming,
        verdict: Verdict,
        stored: _StoredReads,
    ) -> None:
        read = item.read
        if Flag.CONFLICT in verdict.flags:
            key = (int(read.meter_id), str(read.quantity))
            first = stored.value_at(key, read.timestamp.astimezone(UTC))
            detail = (
                f"{read.quantity} at {read.timestamp.isoformat()} already stored as {first}; "
                f"this message says {read.value}"
            )
            self._reject(session, batch, item.message, RejectReason.CONFLICTING_DUPLICATE, detail)
            return
        flags = _flags(verdict)
        detail = f"{read.quantity} at {_fmt_ts(read.timestamp)} [{flags}] {verdict.reason}"
        self._reject(session, batch, item.message, RejectReason.INVALID_READING, detail)

    def _republish(
        self,
        session: Session,
        batch: IngestStats,
        stored: _StoredReads,
        changed: dict[_Key, list[datetime]],
    ) -> None:
        """Re-derive every changed register over its derivation span (docs/readings.md).

        Stored estimates strictly inside each window are replaced by ``estimate_gaps`` over
        it; records that are new or differ from the published ones (and withdrawals) are
        appended to the stream, in the same transaction as the reads.
        """
        settings = self._settings
        plans: list[_Derivation] = []
        for key in sorted(changed):
            profile = stored.profile(key[0])
            interval = profile.interval
            tolerance = settings.tolerance_for(interval)
            t_min, t_max = min(changed[key]), max(changed[key])
            previous = stored.latest(key, t_min, inclusive=False, measured_only=False)
            following = stored.earliest(key, t_max, inclusive=False, measured_only=False)
            start, end = derivation_span(
                t_min,
                t_max,
                previous.timestamp if previous else None,
                following.timestamp if following else None,
                interval,
                settings,
            )
            low = stored.latest(key, start - tolerance, inclusive=True, measured_only=False)
            high = stored.earliest(key, end + tolerance, inclusive=True, measured_only=False)
            window = stored.real_reads(
                key, low.timestamp if low else None, high.timestamp if high else None
            )
            plans.append(_Derivation(key, interval, start, end, window))

        published = _published(session, [(p.key, p.start, p.end) for p in plans])
        created_at = self._clock() if self._clock else datetime.now(UTC)
        deletes: list[dict[str, Any]] = []
        estimates: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        for plan in plans:
            meter_id, quantity = plan.key
            first, last = plan.window[0].timestamp, plan.window[-1].timestamp
            if stored.may_hold_estimates(plan.key, first, last):
                deletes.append({"m": meter_id, "q": quantity, "lo": first, "hi": last})
            estimates += [
                {
                    "meter_id": meter_id,
                    "quantity": quantity,
                    "ts": e.timestamp,
                    "value": e.value,
                    "created_at": created_at,
                }
                for e in estimate_gaps(plan.window, plan.interval, settings)
            ]
            derived = interval_consumption(
                plan.window, plan.interval, settings, start=plan.start, end=plan.end
            )
            before = {
                t_start: offset_record
                for t_start, offset_record in published.get(plan.key, {}).items()
                if plan.start <= t_start and offset_record[1].t_end <= plan.end
            }
            in_span = [record for _, record in before.values()]
            for record in (
                *superseding(in_span, derived),
                *withdrawals(in_span, derived, plan.start, plan.end),
            ):
                earlier = before.get(record.t_start)
                events.append(
                    {
                        "meter_id": meter_id,
                        "quantity": quantity,
                        "t_start": record.t_start,
                        "t_end": record.t_end,
                        "energy_kwh": record.energy_kwh,
                        "quality": record.quality.value,
                        "reason": record.reason,
                        "supersedes": earlier[0] if earlier else None,
                        "created_at": created_at,
                    }
                )
        connection = session.connection()
        _DELETE_ESTIMATES_BETWEEN.execute(connection, deletes)
        _INSERT_ESTIMATES.execute(connection, estimates)
        batch.estimates_stored += len(estimates)
        if events:
            _lock_stream(session)
            _INSERT_CONSUMPTION.execute(connection, events)
            batch.consumption_published += len(events)

    def _store_polled_events(
        self,
        session: Session,
        batch: IngestStats,
        polled: Sequence[PolledEvents],
        known: set[int],
    ) -> None:
        # A meter with no reading in this batch may have left the registry since the
        # poller's targets were built: check it, rather than fail the batch on the key.
        unchecked = {p.meter_id for p in polled} - known
        if unchecked:
            known = known | set(session.scalars(select(Meter.id).where(Meter.id.in_(unchecked))))
        events: list[tuple[int, MeterEvent, datetime]] = []
        for item in polled:
            if item.meter_id not in known:
                continue
            events.extend((item.meter_id, event, item.received_at) for event in item.events)
            if item.gap:
                # Kept where every message the head-end could not take in is kept, so
                # the loss is visible and counted, not silent.
                message = InboundMessage(
                    topic=f"{item.source}/meters/{item.meter_id}/events",
                    payload=item.gap.encode(),
                    received_at=item.received_at,
                    source=item.source,
                )
                self._reject(session, batch, message, RejectReason.EVENTS_LOST, item.gap)
        self._store_events(session, batch, events)

    @staticmethod
    def _store_events(
        session: Session, batch: IngestStats, events: Sequence[tuple[int, MeterEvent, datetime]]
    ) -> None:
        """Store (meter id, event, received at) once per (meter, seq, ts), graded."""
        rows = [
            {
                "meter_id": meter_id,
                "seq": event.seq,
                "ts": event.ts,
                "kind": event.kind.value,
                "detail": dict(event.detail),
                "received_at": received_at,
                "severity": event_severity(event.kind, event.detail).value,
            }
            for meter_id, event, received_at in events
        ]
        if rows:
            result = session.execute(
                _insert_ignoring_duplicates(session, MeterEventRecord).returning(
                    MeterEventRecord.id
                ),
                rows,
            )
            batch.events_stored += len(result.all())

    @staticmethod
    def _apply_status(
        session: Session, batch: IngestStats, accepted: list[tuple[_Parsed, int]]
    ) -> None:
        last_seen: dict[int, datetime] = {}
        online: dict[int, bool] = {}
        for item, meter_id in accepted:
            if isinstance(item.body, Status):
                online[meter_id] = item.body is Status.ONLINE
                batch.status_updates += 1
            if not (isinstance(item.body, Status) and item.body is Status.OFFLINE):
                _keep_latest(last_seen, meter_id, item.message.received_at)
        Ingestor._update_meters(session, last_seen, online)

    @staticmethod
    def _update_meters(
        session: Session, last_seen: dict[int, datetime], online: dict[int, bool]
    ) -> None:
        # Bulk UPDATEs by primary key, one per set of columns: a statement per meter was
        # a round trip per message of a telemetry batch.
        by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for meter_id in sorted(last_seen.keys() | online.keys()):
            values: dict[str, Any] = {"meter_id": meter_id}
            if meter_id in online:
                values["online"] = online[meter_id]
            if meter_id in last_seen:
                values["last_seen_at"] = last_seen[meter_id]
            by_columns.setdefault(tuple(values), []).append(values)
        for columns, rows in by_columns.items():
            _meter_update(columns[1:]).execute(session.connection(), rows)

    @staticmethod
    def _record(session: Session, batch: IngestStats, rejections: list[_Rejection]) -> None:
        for rejection in rejections:
            Ingestor._reject(session, batch, rejection.message, rejection.reason, rejection.detail)

    @staticmethod
    def _reject(
        session: Session,
        batch: IngestStats,
        message: InboundMessage,
        reason: RejectReason,
        detail: str,
    ) -> None:
        log.info("rejected %s message on %s: %s", reason.value, message.topic, detail)
        batch.rejected[reason.value] += 1
        session.add(
            RejectedMessage(
                source=message.source,
                topic=message.topic,
                payload=message.payload,
                reason=f"{reason.value}: {detail}",
                received_at=message.received_at,
            )
        )


def _polled_set(poll: PolledReading) -> _ReadingSet:
    message = poll.as_message()
    prepared = _prepare_reads(poll.meter_id, poll.ts, poll.values, message)
    return _ReadingSet(poll.meter_id, poll.ts, poll.values, message, prepared)


def _prepare_reads(
    meter_id: int, ts: datetime, values: Mapping[Quantity, Decimal], message: InboundMessage
) -> _PreparedReads:
    """The message's values as reads of ``meter_id`` at the storage resolution, and the
    rejections of a timestamp that is not a UTC instant and of values too large to store.

    Needs no database, so it runs before the transaction wherever the meter id is known.
    """
    prepared = _PreparedReads(meter_id, [], [])
    if not isinstance(ts, datetime) or ts.utcoffset() is None:
        # Validation would reject it too, but the context queries need a UTC instant.
        detail = f"[invalid_timestamp] {ts!r} is not a timezone-aware UTC instant"
        prepared.rejections.append(_Rejection(message, RejectReason.INVALID_READING, detail))
        return prepared
    meter = str(meter_id)  # what RegisterRead and validation call a meter
    utc: datetime | None = None
    for quantity, value in values.items():
        storable = _storable(value, quantity)
        if storable is None:
            detail = (
                f"{quantity} at {_fmt_ts(ts)}: {value} is outside the storable "
                f"range (magnitude below {_MAX_STORABLE})"
            )
            prepared.rejections.append(_Rejection(message, RejectReason.INVALID_READING, detail))
            continue
        if utc is None:
            utc = ts.astimezone(UTC)  # once per message, not per value
        read = RegisterRead(meter, quantity, ts, storable)
        key = (meter_id, _QUANTITY_NAMES[quantity])
        prepared.items.append(_Incoming(read, message, key, utc))
    return prepared


def _flags(verdict: Verdict) -> str:
    """The verdict's flags as stored: comma-separated, sorted."""
    return ",".join(sorted(f.value for f in verdict.flags))


def _keep_latest(latest: dict[int, datetime], meter_id: int, seen: datetime) -> None:
    latest[meter_id] = max(seen, latest.get(meter_id, seen))


def _table(model: type[Any]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


@functools.cache
def _meter_update(columns: tuple[str, ...]) -> BulkStatement:
    """UPDATE meters SET the columns by id, as one executemany, built once per column set
    (the ORM's bulk update by primary key cost more than the statement)."""
    table = _table(Meter)
    return BulkStatement(
        update(table)
        .where(table.c.id == bindparam("meter_id"))
        .values({name: bindparam(name) for name in columns})
    )


def _inserted_columns(table: Table) -> list[str]:
    """Every column of ``table`` but its autoincrement key: what a bulk insert's rows give."""
    return [c.key for c in table.columns if c is not table.autoincrement_column]


@functools.cache
def _bulk_insert_ignoring(dialect: str, table: Table) -> BulkStatement:
    return BulkStatement(_insert_ignoring(dialect, table), _inserted_columns(table))


def _insert_ignoring_duplicates(session: Session, model: type[Any] | Table) -> Insert:
    # Built once per dialect and table: it is the same statement for every batch.
    key = (session.get_bind().dialect.name, model)
    statement = _INSERTS_IGNORING.get(key)
    if statement is None:
        statement = _INSERTS_IGNORING[key] = _insert_ignoring(*key)
    return statement


_INSERTS_IGNORING: dict[tuple[str, object], Insert] = {}


def _insert_ignoring(dialect: str, model: type[Any] | Table) -> Insert:
    if dialect == "postgresql":
        return postgresql.insert(model).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(model).on_conflict_do_nothing()
    raise RuntimeError(f"unsupported database dialect {dialect!r}")


# --- VEE storage: what validation and derivation need, loaded in bulk per batch ------------

_Key = tuple[int, str]  # (meters.id, quantity)

# The default nameplate rating when the registry has none: generous, so an unknown meter is
# never flagged for a spike it could really have drawn.
DEFAULT_RATED_MAX_CURRENT_A = Decimal(100)
# Readings are 64-bit integers of micro-units (READING_VALUE_TYPE): anything larger cannot
# be stored, and would fail the whole batch at the database.
_MAX_STORABLE = Decimal(9_000_000_000_000)
# Stored reads loaded around a batch's reads: enough intervals back for the previous read,
# its derivation span and the read before that (three), when a meter reports every interval.
_WINDOW_INTERVALS = 3
# Beyond this spread, one query per meter instead of one for the batch.
_MAX_BULK_SPAN = timedelta(days=2)
# Rows per fallback query when a register's neighbours lie outside the loaded window.
_PAGE = 16

# What ``unchanged_since`` walks over: flagged and rejected reads are stepped over.
_RUN_EVIDENCE = frozenset({Quality.MEASURED, Quality.ESTIMATED})

# Built once: the zero-consumption look-up runs for every register that keeps its value
# (an export register at zero on most meters), and building a select costs more than
# running it; all of a batch's go to the driver at once (headend.bulk_read). Ordered by the
# (meter, quantity, ts) key, so the scan stops at the first match.
_EARLIEST_MEASURED_WITH_VALUE = BulkLookup(
    select(Reading.ts)
    .where(
        Reading.meter_id == bindparam("meter_id"),
        Reading.quantity == bindparam("quantity"),
        Reading.value == bindparam("value"),
        Reading.quality == Quality.MEASURED.value,
    )
    .order_by(Reading.ts)
    .limit(1)
)
_EARLIEST_ESTIMATE_WITH_VALUE = BulkLookup(
    select(ReadingEstimate.ts)
    .where(
        ReadingEstimate.meter_id == bindparam("meter_id"),
        ReadingEstimate.quantity == bindparam("quantity"),
        ReadingEstimate.value == bindparam("value"),
    )
    .order_by(ReadingEstimate.ts)
    .limit(1)
)
# The batch's statements, built once with bound parameters (lists expand into IN): building
# a select per batch cost more CPU than SQLite took to run it.
_ESTIMATES = _table(ReadingEstimate)
_DELETE_ESTIMATES_BETWEEN = BulkStatement(
    delete(_ESTIMATES).where(
        _ESTIMATES.c.meter_id == bindparam("m"),
        _ESTIMATES.c.quantity == bindparam("q"),
        _ESTIMATES.c.ts > bindparam("lo"),
        _ESTIMATES.c.ts < bindparam("hi"),
    )
)
_INSERT_ESTIMATES = BulkStatement(insert(_ESTIMATES), _inserted_columns(_ESTIMATES))
_CONSUMPTION = _table(ConsumptionEventRecord)
_INSERT_CONSUMPTION = BulkStatement(insert(_CONSUMPTION), _inserted_columns(_CONSUMPTION))
_LOCK_METERS_BY_COMM_ID = (
    select(Meter.comm_id, Meter.id)
    .where(among(Meter.comm_id, "comm_ids"))
    .order_by(Meter.id)
    .with_for_update()
)
_LOCK_METER_PROFILES = (
    select(Meter.id, Meter.phases, Meter.rated_max_current_a)
    .where(among(Meter.id, "meter_ids"))
    .order_by(Meter.id)
    .with_for_update()
)
_INSTALLED_AT = (
    select(MeterLifecycleChange.meter_id, func.max(MeterLifecycleChange.changed_at))
    .where(
        among(MeterLifecycleChange.meter_id, "meter_ids"),
        MeterLifecycleChange.to_state == MeterLifecycle.INSTALLED.value,
    )
    .group_by(MeterLifecycleChange.meter_id)
)
_READINGS_IN_WINDOW = select(
    Reading.meter_id, Reading.quantity, Reading.ts, Reading.value, Reading.quality
).where(
    among(Reading.meter_id, "meters"),
    among(Reading.quantity, "quantities"),
    Reading.ts >= bindparam("lo"),
    Reading.ts <= bindparam("hi"),
)
_ESTIMATES_IN_WINDOW = select(
    ReadingEstimate.meter_id, ReadingEstimate.quantity, ReadingEstimate.ts, ReadingEstimate.value
).where(
    among(ReadingEstimate.meter_id, "meters"),
    among(ReadingEstimate.quantity, "quantities"),
    ReadingEstimate.ts >= bindparam("lo"),
    ReadingEstimate.ts <= bindparam("hi"),
)
_REGISTERS_WITH_READS_AFTER = (
    select(Reading.meter_id, Reading.quantity)
    .where(
        among(Reading.meter_id, "meters"),
        among(Reading.quantity, "quantities"),
        Reading.ts > bindparam("edge"),
    )
    .distinct()
)
_REGISTERS_WITH_READS_BEFORE = (
    select(Reading.meter_id, Reading.quantity)
    .where(
        among(Reading.meter_id, "meters"),
        among(Reading.quantity, "quantities"),
        Reading.ts < bindparam("edge"),
    )
    .distinct()
)
_PUBLISHED_IN_WINDOW = (
    select(
        ConsumptionEventRecord.id,
        ConsumptionEventRecord.meter_id,
        ConsumptionEventRecord.quantity,
        ConsumptionEventRecord.t_start,
        ConsumptionEventRecord.t_end,
        ConsumptionEventRecord.energy_kwh,
        ConsumptionEventRecord.quality,
        ConsumptionEventRecord.reason,
    )
    .where(
        among(ConsumptionEventRecord.meter_id, "meters"),
        among(ConsumptionEventRecord.quantity, "quantities"),
        ConsumptionEventRecord.t_start >= bindparam("lo"),
        ConsumptionEventRecord.t_start <= bindparam("hi"),
    )
    .order_by(ConsumptionEventRecord.id)
)
# The key of the PostgreSQL advisory lock that orders publishers (see _lock_stream).
_STREAM_LOCK_KEY = 0x67765F636F6E73  # "gv_cons"


# Not frozen: one per value of every message, never shared, and a frozen __init__ costs more.
@dataclass(slots=True)
class _Incoming:
    read: RegisterRead
    message: InboundMessage
    key: _Key  # (meter id, quantity name) of ``read``
    utc: datetime  # ``read.timestamp`` in UTC


@dataclass(frozen=True, slots=True)
class _Derivation:
    key: _Key
    interval: timedelta
    start: datetime
    end: datetime
    window: list[StoredRead]


class _History:
    """The real reads of one register, complete over ``[low, high]`` (None: unbounded)."""

    __slots__ = ("estimates", "estimates_span", "extra", "high", "low", "reads", "times")

    def __init__(self, low: datetime | None, high: datetime | None) -> None:
        self.low = low
        self.high = high
        self.reads: list[StoredRead] = []
        self.times: list[datetime] = []
        # Context only, outside [low, high]: the start of a run of unchanged values.
        self.extra: list[StoredRead] = []
        self.estimates: list[StoredRead] = []
        # Where ``estimates`` holds every stored estimate of the register (None: unknown).
        self.estimates_span: tuple[datetime, datetime] | None = None

    def add(self, read: StoredRead) -> None:
        i = bisect.bisect_right(self.times, read.timestamp)
        self.times.insert(i, read.timestamp)
        self.reads.insert(i, read)


class _StoredReads:
    """Stored reads around a batch, per register, extended by a query only where needed."""

    def __init__(
        self, session: Session, profiles: dict[int, MeterProfile], settings: VeeSettings
    ) -> None:
        self._session = session
        self._profiles = profiles
        self._settings = settings
        self._histories: dict[_Key, _History] = {}
        self._by_meter: dict[int, list[_History]] = {}

    def profile(self, meter_id: int) -> MeterProfile:
        return self._profiles[meter_id]

    def load(
        self, spans: dict[_Key, tuple[datetime, datetime]], incoming: dict[int, list[_Incoming]]
    ) -> None:
        """Load the registers' stored reads around ``spans`` (the batch's reads per register).

        Cumulative registers get every real read within a few intervals on either side and
        the estimates there; instantaneous ones only what is stored at the batch's own
        timestamps (duplicates and conflicts are all validation asks of them).
        """
        cumulative = {k: v for k, v in spans.items() if k[1] in _CUMULATIVE_NAMES}
        instantaneous = {k: v for k, v in spans.items() if k not in cumulative}
        for key, (lo, hi) in cumulative.items():
            margin = _WINDOW_INTERVALS * self._profiles[key[0]].interval
            self._histories[key] = self._new_history(key, lo - margin, hi + margin)
        for key, (lo, hi) in instantaneous.items():
            self._histories[key] = self._new_history(key, lo, hi)

        for group, lo, hi in _groups(cumulative, _WINDOW_INTERVALS * _max_interval(self._profiles)):
            self._fill(Reading, group, lo, hi)
            self._fill(ReadingEstimate, group, lo, hi)
        for group, lo, hi in _groups(instantaneous, timedelta(0)):
            self._fill(Reading, group, lo, hi)
        self._close_unbounded(cumulative)
        # Validation's neighbours: the measured reads on either side of the batch's reads.
        for key, (lo, hi) in cumulative.items():
            self.latest(key, lo, inclusive=False, measured_only=True)
            self.earliest(key, hi, inclusive=False, measured_only=True)
        self._load_unchanged_runs(cumulative, incoming)

    def _new_history(self, key: _Key, low: datetime, high: datetime) -> _History:
        installed_at = self._profiles[key[0]].installed_at
        # Reads before the installation are a previous register epoch: never context.
        history = _History(None if installed_at is not None and low <= installed_at else low, high)
        self._by_meter.setdefault(key[0], []).append(history)
        return history

    def _fill(
        self,
        model: type[Reading] | type[ReadingEstimate],
        keys: list[_Key],
        lo: datetime,
        hi: datetime,
    ) -> None:
        parameters = {
            "meters": list({m for m, _ in keys}),
            "quantities": list({q for _, q in keys}),
            "lo": lo,
            "hi": hi,
        }
        statement = _READINGS_IN_WINDOW if model is Reading else _ESTIMATES_IN_WINDOW
        # .all() fetches in one call; iterating the result fetched row by row.
        rows: Sequence[Any] = self._session.connection().execute(statement, parameters).all()
        if model is ReadingEstimate:
            self._note_estimates_span(keys, lo, hi)
        for row in rows:
            key: _Key = (int(row[0]), str(row[1]))
            history = self._histories.get(key)
            if history is None:
                continue
            quality = _quality(str(row[4])) if model is Reading else Quality.ESTIMATED
            read = self._stored(key, row[2], row[3], quality)
            if read is None or not self._covers(history, read.timestamp):
                continue
            if quality is Quality.ESTIMATED:
                history.estimates.append(read)
            else:
                history.add(read)

    def _note_estimates_span(self, keys: list[_Key], lo: datetime, hi: datetime) -> None:
        """Record where the estimates loaded from ``[lo, hi]`` are all there are."""
        for meter_id, quantity in keys:
            history = self._histories[(meter_id, quantity)]
            # What _fill keeps: within the history's bounds, and (where its low bound is
            # the installation) not before the installation.
            low = history.low if history.low is not None else self._profiles[meter_id].installed_at
            assert low is not None and history.high is not None
            history.estimates_span = (max(lo, low), min(hi, history.high))

    def _stored(
        self, key: _Key, ts: datetime, value: Decimal, quality: Quality
    ) -> StoredRead | None:
        installed_at = self._profiles[key[0]].installed_at
        if installed_at is not None and ts < installed_at:
            return None
        quantity = _quantity(key[1])
        # Trusted: the database gives aware UTC times (UtcDateTime) and values within
        # READING_VALUE_TYPE's range and resolution, so StoredRead's checks cannot fail.
        value = _at_resolution(value, quantity)
        return StoredRead._trusted(str(key[0]), quantity, ts, value, quality)

    @staticmethod
    def _covers(history: _History, ts: datetime) -> bool:
        return (history.low is None or ts >= history.low) and (
            history.high is None or ts <= history.high
        )

    def _close_unbounded(self, spans: dict[_Key, tuple[datetime, datetime]]) -> None:
        """Mark registers with nothing stored beyond the loaded window as complete there.

        The common cases (a meter's newest read; a meter's first reads) then need no
        further query; only registers with reads beyond the window (a gap, a late read) are
        extended one by one when a neighbour is asked for.
        """
        for side in ("after", "before"):
            open_keys = []
            for key, (lo, hi) in spans.items():
                history = self._histories[key]
                if side == "after" and history.high is not None:
                    if not any(
                        r.quality is Quality.MEASURED for r in history.reads if r.timestamp > hi
                    ):
                        open_keys.append(key)
                elif side == "before" and history.low is not None:
                    # Derivation reaches back to the real read at or before its span's
                    # start (the third one back when a meter reports every interval), and
                    # validation to the previous measured read. With fewer loaded, asking
                    # here (one query for the batch) spares a query per register later.
                    earlier = [r for r in history.reads if r.timestamp < lo]
                    if len(earlier) < 3 or not any(r.quality is Quality.MEASURED for r in earlier):
                        open_keys.append(key)
            if not open_keys:
                continue
            histories = [self._histories[k] for k in open_keys]
            if side == "after":
                statement = _REGISTERS_WITH_READS_AFTER
                edge = min(h.high for h in histories if h.high is not None)
            else:
                statement = _REGISTERS_WITH_READS_BEFORE
                edge = max(h.low for h in histories if h.low is not None)
            parameters = {
                "meters": list({m for m, _ in open_keys}),
                "quantities": list({q for _, q in open_keys}),
                "edge": edge,
            }
            found = {
                (meter_id, quantity)
                for meter_id, quantity in self._session.connection().execute(statement, parameters)
            }
            for key in open_keys:
                if key not in found:
                    if side == "after":
                        self._histories[key].high = None
                    else:
                        self._histories[key].low = None

    def _load_unchanged_runs(
        self, spans: dict[_Key, tuple[datetime, datetime]], incoming: dict[int, list[_Incoming]]
    ) -> None:
        """For zero-consumption: where a batch read repeats a stored value, the earliest
        measured read or estimate with that value (one query each, only then, all sent
        together).

        A run of unchanged values is walked back read by read (``unchanged_since``), so the
        earliest read is needed only when the run reaches the loaded window's lower edge:
        a loaded real read with another value before the batch read ends the walk first.
        """
        wanted: set[tuple[_Key, Decimal]] = set()
        for items in incoming.values():
            for item in items:
                key = item.key
                history = self._histories.get(key)
                if key not in spans or history is None or history.low is None:
                    continue  # not a loaded register, or its whole history is loaded
                value = item.read.value
                if not any(
                    r.value == value and r.quality is Quality.MEASURED for r in history.reads
                ):
                    continue
                ts = item.read.timestamp
                if any(
                    r.value != value and r.timestamp < ts and r.quality in _RUN_EVIDENCE
                    for r in (*history.reads, *history.estimates)
                ):
                    continue
                wanted.add((key, value))
        if not wanted:
            return
        ordered = sorted(wanted, key=lambda w: (w[0], str(w[1])))
        parameters = [{"meter_id": m, "quantity": q, "value": value} for (m, q), value in ordered]
        connection = self._session.connection()
        measured = _EARLIEST_MEASURED_WITH_VALUE.execute(connection, parameters)
        estimated = _EARLIEST_ESTIMATE_WITH_VALUE.execute(connection, parameters)
        for (key, value), *earliest in zip(ordered, measured, estimated, strict=True):
            history = self._histories[key]
            for ts, quality in zip(earliest, (Quality.MEASURED, Quality.ESTIMATED), strict=True):
                if ts is None or self._covers(history, ts):
                    continue
                read = self._stored(key, ts, value, quality)
                if read is not None:
                    history.extra.append(read)

    def context(self, meter_id: int) -> list[StoredRead]:
        """Every loaded stored read of one meter, for ``validate_reads``."""
        out: list[StoredRead] = []
        for history in self._by_meter.get(meter_id, ()):
            out += history.reads
            out += history.extra
            out += history.estimates
        return out

    def add(self, key: _Key, read: StoredRead) -> None:
        self._histories[key].add(read)

    def may_hold_estimates(self, key: _Key, first: datetime, last: datetime) -> bool:
        """Whether estimates may be stored strictly between ``first`` and ``last``: False
        only when the loaded estimates cover that span and none of them lies inside it."""
        history = self._histories[key]
        span = history.estimates_span
        if span is None or first < span[0] or last > span[1]:
            return True
        return any(first < e.timestamp < last for e in history.estimates)

    def value_at(self, key: _Key, ts: datetime) -> Decimal | None:
        history = self._histories.get(key)
        if history is None:
            return None
        i = bisect.bisect_left(history.times, ts)
        if i < len(history.times) and history.times[i] == ts:
            return history.reads[i].value
        return None

    def latest(
        self, key: _Key, ts: datetime, *, inclusive: bool, measured_only: bool
    ) -> StoredRead | None:
        """The latest real read before ``ts`` (at or before, if ``inclusive``)."""
        history = self._histories[key]
        while True:
            i = (bisect.bisect_right if inclusive else bisect.bisect_left)(history.times, ts)
            for read in reversed(history.reads[:i]):
                if not measured_only or read.quality is Quality.MEASURED:
                    return read
            if history.low is None:
                return None
            self._extend(key, history, down=True)

    def earliest(
        self, key: _Key, ts: datetime, *, inclusive: bool, measured_only: bool
    ) -> StoredRead | None:
        """The earliest real read after ``ts`` (at or after, if ``inclusive``)."""
        history = self._histories[key]
        while True:
            i = (bisect.bisect_left if inclusive else bisect.bisect_right)(history.times, ts)
            for read in history.reads[i:]:
                if not measured_only or read.quality is Quality.MEASURED:
                    return read
            if history.high is None:
                return None
            self._extend(key, history, down=False)

    def real_reads(
        self, key: _Key, first: datetime | None, last: datetime | None
    ) -> list[StoredRead]:
        """The register's real reads from ``first`` to ``last`` (None: from the first / to
        the last read there is), which must be loaded (``latest``/``earliest`` did that)."""
        history = self._histories[key]
        lo = 0 if first is None else bisect.bisect_left(history.times, first)
        hi = len(history.reads) if last is None else bisect.bisect_right(history.times, last)
        return history.reads[lo:hi]

    def _extend(self, key: _Key, history: _History, *, down: bool) -> None:
        """One page of the register's reads beyond the loaded span (a gap, a late read)."""
        meter_id, quantity = key
        query = select(Reading.ts, Reading.value, Reading.quality).where(
            Reading.meter_id == meter_id, Reading.quantity == quantity
        )
        installed_at = self._profiles[meter_id].installed_at
        if down:
            assert history.low is not None
            query = query.where(Reading.ts < history.low).order_by(Reading.ts.desc())
            if installed_at is not None:
                query = query.where(Reading.ts >= installed_at)
        else:
            assert history.high is not None
            query = query.where(Reading.ts > history.high).order_by(Reading.ts)
        rows = self._session.connection().execute(query.limit(_PAGE)).all()
        for ts, value, quality in rows:
            read = self._stored(key, ts, value, _quality(quality))
            if read is not None:
                history.add(read)
        edge = rows[-1][0] if len(rows) == _PAGE else None
        if down:
            history.low = edge
        else:
            history.high = edge


def _max_interval(profiles: dict[int, MeterProfile]) -> timedelta:
    return max(p.interval for p in profiles.values())


def _groups(
    spans: dict[_Key, tuple[datetime, datetime]], margin: timedelta
) -> list[tuple[list[_Key], datetime, datetime]]:
    """One query's worth of registers and its time range: the whole batch when its reads are
    close together (the usual case), else one group per meter."""
    if not spans:
        return []
    lo = min(s[0] for s in spans.values())
    hi = max(s[1] for s in spans.values())
    if hi - lo <= _MAX_BULK_SPAN:
        return [(list(spans), lo - margin, hi + margin)]
    per_meter: dict[int, list[_Key]] = {}
    for key in spans:
        per_meter.setdefault(key[0], []).append(key)
    return [
        (
            keys,
            min(spans[k][0] for k in keys) - margin,
            max(spans[k][1] for k in keys) + margin,
        )
        for keys in per_meter.values()
    ]


def _load_profiles(session: Session, meter_ids: set[int]) -> dict[int, MeterProfile]:
    """VEE profiles of registered meters, locking their rows (PostgreSQL) in id order.

    The lock serialises ingestion per meter across workers, so a meter's reads are always
    judged and derived against everything stored before them; taking it in id order keeps
    two workers from deadlocking.
    """
    if not meter_ids:
        return {}
    ids = {"meter_ids": list(meter_ids)}
    rows = session.execute(_LOCK_METER_PROFILES, ids).all()
    installs: dict[int, datetime] = {
        meter_id: changed_at for meter_id, changed_at in session.execute(_INSTALLED_AT, ids)
    }
    return {
        meter_id: _profile(meter_id, phases, rated, installs.get(meter_id))
        for meter_id, phases, rated in rows
    }


# Frozen, and the same for every batch of a meter until its registry row changes: built
# once, not per batch.
@functools.lru_cache(maxsize=65_536)
def _profile(
    meter_id: int, phases: int | None, rated_a: int | None, installed: datetime | None
) -> MeterProfile:
    """The meter's VEE profile from its registry row; defaults where the row says nothing."""
    rating = Decimal(rated_a) if rated_a and rated_a > 0 else DEFAULT_RATED_MAX_CURRENT_A
    interval = MeterProfile.__dataclass_fields__["interval"].default
    assert isinstance(interval, timedelta)
    # The lifecycle records when the installation was entered, not the minute the meter
    # went up: counting from the start of that interval keeps the install read valid.
    installed_at = floor_boundary(installed.astimezone(UTC), interval) if installed else None
    return MeterProfile(
        str(meter_id),
        phases if phases in (1, 3) else 1,
        rating,
        interval=interval,
        installed_at=installed_at,
    )


def _published(
    session: Session, spans: list[tuple[_Key, datetime, datetime]]
) -> dict[_Key, dict[datetime, tuple[int, IntervalConsumption]]]:
    """The latest published record (offset, record) per interval in each register's span."""
    out: dict[_Key, dict[datetime, tuple[int, IntervalConsumption]]] = {}
    by_key = {key: (start, end) for key, start, end in spans}
    for keys, lo, hi in _groups(by_key, timedelta(0)):
        rows = session.execute(
            _PUBLISHED_IN_WINDOW,
            {
                "meters": list({m for m, _ in keys}),
                "quantities": list({q for _, q in keys}),
                "lo": lo,
                "hi": hi,
            },
        )
        for offset, meter_id, quantity, t_start, t_end, energy, quality, reason in rows:
            key = (meter_id, quantity)
            if key not in by_key:
                continue
            register = _quantity(quantity)
            record = IntervalConsumption(
                str(meter_id),
                register,
                t_start,
                t_end,
                _at_resolution(energy, register),
                _quality(quality),
                reason,
            )
            out.setdefault(key, {})[t_start] = (offset, record)
    return out


def _lock_stream(session: Session) -> None:
    """Make publishers commit in offset order (PostgreSQL; SQLite has one writer anyway).

    A consumer reads "every record after my offset": if a transaction holding offset 10
    committed after one holding 11, a consumer could read 11, store it, and never see 10.
    The transaction-scoped advisory lock is held from here to commit, so offsets are
    handed out and made visible in the same order.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _STREAM_LOCK_KEY})


def _storable(value: Decimal, quantity: Quantity) -> Decimal | None:
    """``value`` at the storage resolution (six places, see READING_VALUE_TYPE), or None
    when it is too large to store. Non-finite and malformed values are passed on as they
    are, for validation to reject with its own flag."""
    if not isinstance(value, Decimal) or not value.is_finite():
        return value
    if abs(value) >= _MAX_STORABLE:
        return None
    return _at_resolution(READING_VALUE_TYPE.quantize(value), quantity)


def _at_resolution(value: Decimal, quantity: Quantity) -> Decimal:
    """A stored value written with the quantity's decimals, or fewer trailing zeros than
    storage gives it when it has more: the resolution validation and estimation see must
    not depend on whether a value came off the wire or out of the database."""
    shown = value.quantize(_RESOLUTIONS[quantity])
    return shown if shown == value else value.normalize()


# Enum look-ups by value as plain dicts: ``Quantity(name)`` goes through the enum machinery,
# and ingestion does it for every stored read it loads.
_QUANTITIES = {q.value: q for q in Quantity}
_QUALITIES = {q.value: q for q in Quality}
_QUANTITY_NAMES = {q: q.value for q in Quantity}
_QUALITY_NAMES = {q: q.value for q in Quality}
# Cumulative registers, by member and by name: ``q.info.kind`` is two lookups per read.
_CUMULATIVE = frozenset(q for q in Quantity if q.info.kind is Kind.CUMULATIVE)
_CUMULATIVE_NAMES = frozenset(q.value for q in _CUMULATIVE)
# One step of each quantity's resolution (0.001 for three decimals), built once.
_RESOLUTIONS = {q: Decimal(1).scaleb(-q.info.decimals) for q in Quantity}


def _quantity(name: str) -> Quantity:
    try:
        return _QUANTITIES[name]
    except KeyError:
        return Quantity(name)  # raises the enum's own ValueError


def _quality(name: str) -> Quality:
    try:
        return _QUALITIES[name]
    except KeyError:
        return Quality(name)


def _fmt_ts(ts: datetime) -> str:
    try:
        return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")
    except (ValueError, OverflowError):
        return repr(ts)
