"""The one ingestion path: every inbound meter message (MQTT today, Modbus polls next) ends here.

A batch is written in one transaction. Nothing is dropped: a message that cannot be
accepted (foreign topic, malformed payload, unknown meter, a second value for a stored
reading) is kept whole in ``rejected_messages`` with its reason, and counted.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import Insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from headend.models import (
    READING_VALUE_TYPE,
    Meter,
    MeterEventRecord,
    Reading,
    RejectedMessage,
)
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
from protocols.quantities import Quantity

log = logging.getLogger(__name__)


class RejectReason(StrEnum):
    BAD_TOPIC = "bad_topic"
    BAD_PAYLOAD = "bad_payload"
    UNKNOWN_METER = "unknown_meter"
    CONFLICTING_DUPLICATE = "conflicting_duplicate"


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

    def add(self, other: IngestStats) -> None:
        self.messages += other.messages
        self.readings_stored += other.readings_stored
        self.readings_duplicate += other.readings_duplicate
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
class _ReadingSet:
    meter_id: int
    ts: datetime
    values: Mapping[Quantity, Decimal]
    message: InboundMessage


@dataclass(frozen=True, slots=True)
class _Parsed:
    message: InboundMessage
    meter_comm_id: str
    body: TelemetryReport | MeterEvent | Status


class Ingestor:
    """Turns batches of inbound messages into stored readings, events and meter status."""

    def __init__(self, session_factory: sessionmaker[Session], scheme: TopicScheme) -> None:
        self._session_factory = session_factory
        self._scheme = scheme
        self.stats = IngestStats()

    def ingest(self, messages: Sequence[InboundMessage]) -> IngestStats:
        """Store one batch atomically and return what happened to it.

        Raises only for infrastructure failures (database unreachable); the batch is then
        not stored at all and may be retried as a whole.
        """
        batch = IngestStats(messages=len(messages))
        with self._session_factory() as session, session.begin():
            parsed = self._parse_all(session, messages, batch)
            meter_ids = self._meter_ids(session, {p.meter_comm_id for p in parsed})
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
                _ReadingSet(meter_id, item.body.ts, item.body.values, item.message)
                for item, meter_id in accepted
                if isinstance(item.body, TelemetryReport)
            ]
            self._store_readings(session, batch, reading_sets)
            self._store_events(session, batch, accepted)
            self._apply_status(session, batch, accepted)
        self.stats.add(batch)
        return batch

    def ingest_polled(self, polls: Sequence[PolledReading]) -> IngestStats:
        """Store polled readings of registered meters in one transaction (see ``ingest``)."""
        batch = IngestStats(messages=len(polls))
        with self._session_factory() as session, session.begin():
            reading_sets = [_ReadingSet(p.meter_id, p.ts, p.values, p.as_message()) for p in polls]
            self._store_readings(session, batch, reading_sets)
            last_seen: dict[int, datetime] = {}
            for poll in polls:
                last_seen[poll.meter_id] = max(
                    poll.received_at, last_seen.get(poll.meter_id, poll.received_at)
                )
            if last_seen:
                # One executemany (bulk UPDATE by primary key), not a statement per meter:
                # per-meter round trips made this the poller's bottleneck on PostgreSQL.
                session.execute(
                    update(Meter),
                    [
                        {"id": meter_id, "last_seen_at": seen, "online": True}
                        for meter_id, seen in last_seen.items()
                    ],
                )
        self.stats.add(batch)
        return batch

    def _parse_all(
        self, session: Session, messages: Sequence[InboundMessage], batch: IngestStats
    ) -> list[_Parsed]:
        parsed: list[_Parsed] = []
        for message in messages:
            try:
                meter_comm_id, channel = self._scheme.parse_meter_topic(message.topic)
            except TopicError as exc:
                self._reject(session, batch, message, RejectReason.BAD_TOPIC, str(exc))
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
                self._reject(session, batch, message, RejectReason.BAD_PAYLOAD, str(exc))
                continue
            parsed.append(_Parsed(message, meter_comm_id, body))
        return parsed

    @staticmethod
    def _meter_ids(session: Session, comm_ids: set[str]) -> dict[str, int]:
        if not comm_ids:
            return {}
        rows = session.execute(select(Meter.comm_id, Meter.id).where(Meter.comm_id.in_(comm_ids)))
        return {comm_id: meter_id for comm_id, meter_id in rows}

    def _store_readings(
        self, session: Session, batch: IngestStats, reading_sets: list[_ReadingSet]
    ) -> None:
        candidates: dict[tuple[int, str, datetime], tuple[Decimal, InboundMessage]] = {}
        for reading_set in reading_sets:
            for quantity, value in reading_set.values.items():
                key = (reading_set.meter_id, quantity.value, reading_set.ts)
                earlier = candidates.get(key)
                if earlier is None:
                    candidates[key] = (value, reading_set.message)
                elif earlier[0] == value:
                    batch.readings_duplicate += 1
                else:
                    self._reject_conflict(
                        session, batch, reading_set.message, key, earlier[0], value
                    )
        if not candidates:
            return
        stored = self._stored_values(session, list(candidates))
        rows = []
        for key, (value, message) in candidates.items():
            if key in stored:
                if stored[key] == READING_VALUE_TYPE.quantize(value):
                    batch.readings_duplicate += 1
                else:
                    self._reject_conflict(session, batch, message, key, stored[key], value)
                continue
            rows.append(
                {
                    "meter_id": key[0],
                    "quantity": key[1],
                    "ts": key[2],
                    "value": value,
                    "source": message.source,
                    "received_at": message.received_at,
                }
            )
        if rows:
            result = session.execute(
                _insert_ignoring_duplicates(session, Reading).returning(Reading.id), rows
            )
            inserted = len(result.all())
            batch.readings_stored += inserted
            # A concurrent worker stored the rest first; those are duplicates, not losses.
            batch.readings_duplicate += len(rows) - inserted

    @staticmethod
    def _stored_values(
        session: Session, keys: list[tuple[int, str, datetime]]
    ) -> dict[tuple[int, str, datetime], Decimal]:
        meter_ids = {k[0] for k in keys}
        timestamps = [k[2] for k in keys]
        rows = session.execute(
            select(Reading.meter_id, Reading.quantity, Reading.ts, Reading.value).where(
                Reading.meter_id.in_(meter_ids),
                Reading.ts >= min(timestamps),
                Reading.ts <= max(timestamps),
            )
        )
        wanted = set(keys)
        return {
            (meter_id, quantity, ts): value
            for meter_id, quantity, ts, value in rows
            if (meter_id, quantity, ts) in wanted
        }

    def _reject_conflict(
        self,
        session: Session,
        batch: IngestStats,
        message: InboundMessage,
        key: tuple[int, str, datetime],
        first: Decimal,
        second: Decimal,
    ) -> None:
        _, quantity, ts = key
        self._reject(
            session,
            batch,
            message,
            RejectReason.CONFLICTING_DUPLICATE,
            f"{quantity} at {ts.isoformat()} already stored as {first}; this message says {second}",
        )

    def _store_events(
        self, session: Session, batch: IngestStats, accepted: list[tuple[_Parsed, int]]
    ) -> None:
        rows = [
            {
                "meter_id": meter_id,
                "seq": item.body.seq,
                "ts": item.body.ts,
                "kind": item.body.kind.value,
                "detail": dict(item.body.detail),
                "received_at": item.message.received_at,
            }
            for item, meter_id in accepted
            if isinstance(item.body, MeterEvent)
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
        for meter_id in last_seen.keys() | online.keys():
            values: dict[str, Any] = {}
            if meter_id in online:
                values["online"] = online[meter_id]
            if meter_id in last_seen:
                values["last_seen_at"] = last_seen[meter_id]
            session.execute(update(Meter).where(Meter.id == meter_id).values(**values))

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


def _keep_latest(latest: dict[int, datetime], meter_id: int, seen: datetime) -> None:
    latest[meter_id] = max(seen, latest.get(meter_id, seen))


def _insert_ignoring_duplicates(session: Session, model: type[Any]) -> Insert:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(model).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(model).on_conflict_do_nothing()
    raise RuntimeError(f"unsupported database dialect {dialect!r}")
